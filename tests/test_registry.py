"""The MLflow registry: versions, aliases, the promotion gate, and loading in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inbo import schemas
from inbo.settings import Settings
from models.base import TrainingData
from models.popularity import PopularityModel
from pipelines import promotion, registry
from pipelines.tracking import log_step_run

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)


def fitted(tmp: Path, weights: dict[int, float]) -> Path:
    items = schemas.conform(
        pd.DataFrame(
            {
                "item_id": list(weights), "publisher_id": 1, "publisher": "p", "title": "t",
                "description": "d", "category": "sport", "tags": [[] for _ in weights],
                "published_at": AS_OF - timedelta(days=1), "language": "en",
            }
        ),
        schemas.ITEMS,
    )  # fmt: skip
    interactions = schemas.conform(
        pd.DataFrame(
            {
                "user_id": 1, "item_id": list(weights), "weight": list(weights.values()), "events": 1,
                "last_ts": AS_OF, "read_fraction": 0.0, "is_read": False, "dismissed": False,
            }
        ),
        schemas.INTERACTIONS,
    )  # fmt: skip
    data = TrainingData(interactions, items, schemas.empty(schemas.CONTINUE_READING), AS_OF)
    directory = tmp / f"model-{len(list(tmp.iterdir()))}"
    PopularityModel().fit(data).save(directory)
    return directory


def register_one(settings: Settings, tmp: Path, batch: str, weights: dict[int, float]) -> int:
    directory = fitted(tmp, weights)
    run_id = log_step_run(settings, "popularity", batch, {"half_life": 7}, {"items": 3.0})
    return registry.register(settings, "popularity", run_id, directory, batch)


def test_first_model_is_promoted_and_loads_in_a_fresh_process(
    settings: Settings, tmp_path: Path
) -> None:
    version = register_one(settings, tmp_path, "20261120T0000Z", {10: 3.0, 11: 2.0, 12: 1.0})
    assert registry.alias_version(settings, "popularity", registry.CHALLENGER) == version
    decision = promotion.gate(settings, "popularity", version, 0.3, None, margin=0.01)
    assert decision.promoted and "first model" in decision.reason
    assert registry.alias_version(settings, "popularity", registry.CHAMPION) == version

    probe = (
        "import json, numpy as np; from inbo.settings import get_settings; from pipelines import registry;"
        "from models.factory import load;"
        "path, v = registry.download(get_settings(), 'popularity', 'champion');"
        "recs = load('popularity', path).global_top(3);"
        "print(json.dumps({'version': v, 'items': recs['item_id'].tolist()}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "version": version,
        "items": [10, 11, 12],
    }


def test_registering_the_same_run_and_batch_twice_keeps_one_version(
    settings: Settings, tmp_path: Path
) -> None:
    directory = fitted(tmp_path, {10: 1.0})
    run_id = log_step_run(settings, "popularity", "b1", {"half_life": 7}, {"items": 1.0})
    first = registry.register(settings, "popularity", run_id, directory, "b1")
    again = registry.register(settings, "popularity", run_id, directory, "b1")
    assert first == again
    assert [row.version for row in registry.list_models(settings)] == [first]


def test_gate_refuses_a_worse_challenger_and_keeps_the_champion(
    settings: Settings, tmp_path: Path
) -> None:
    champion = register_one(settings, tmp_path, "b1", {10: 3.0})
    promotion.gate(settings, "popularity", champion, 0.40, None, margin=0.01)
    worse = register_one(settings, tmp_path, "b2", {11: 3.0})
    decision = promotion.gate(settings, "popularity", worse, 0.30, 0.40, margin=0.01)
    assert not decision.promoted and decision.champion == champion
    assert registry.alias_version(settings, "popularity", registry.CHAMPION) == champion
    assert registry.alias_version(settings, "popularity", registry.CHALLENGER) == worse

    close = register_one(settings, tmp_path, "b3", {12: 3.0})
    assert promotion.gate(settings, "popularity", close, 0.395, 0.40, margin=0.01).promoted
    assert registry.alias_version(settings, "popularity", registry.CHAMPION) == close


def test_manual_promotion_and_pyfunc_loading(settings: Settings, tmp_path: Path) -> None:
    import mlflow

    first = register_one(settings, tmp_path, "b1", {10: 3.0, 11: 1.0})
    registry.promote(settings, "popularity", first)
    model = mlflow.pyfunc.load_model("models:/inbo-popularity@champion")
    assert isinstance(model.unwrap_python_model(), registry.RecommenderPyfunc)
    with pytest.raises(Exception, match="alias"):
        registry.download(settings, "popularity", "no-such-alias")
    assert np.array_equal(registry.download(settings, "popularity", str(first))[0].exists(), True)


def test_als_registered_version_recommends_the_same_in_a_fresh_process(
    settings: Settings, tmp_path: Path
) -> None:
    from models.als import ALSModel

    rng = np.random.default_rng(0)
    users, items = rng.integers(1, 40, 600), rng.integers(100, 160, 600)
    interactions = schemas.conform(
        pd.DataFrame(
            {
                "user_id": users, "item_id": items, "weight": rng.uniform(0.5, 3, 600), "events": 1,
                "last_ts": AS_OF, "read_fraction": 0.0, "is_read": False, "dismissed": False,
            }
        ).drop_duplicates(["user_id", "item_id"]),
        schemas.INTERACTIONS,
    )  # fmt: skip
    catalogue = schemas.conform(
        pd.DataFrame(
            {
                "item_id": range(100, 160), "publisher_id": 1, "publisher": "p", "title": "t",
                "description": "d", "category": "sport", "tags": [[] for _ in range(60)],
                "published_at": AS_OF - timedelta(days=1), "language": "en",
            }
        ),
        schemas.ITEMS,
    )  # fmt: skip
    data = TrainingData(interactions, catalogue, schemas.empty(schemas.CONTINUE_READING), AS_OF)
    model = ALSModel(factors=8, iterations=5, num_threads=1).fit(data)
    model.save(tmp_path / "als")
    run_id = log_step_run(settings, "als", "b1", model.params, {"users": 39.0})
    version = registry.register(settings, "als", run_id, tmp_path / "als", "b1")
    promotion.gate(settings, "als", version, 0.2, None, margin=0.01)
    expected = model.recommend(np.array([1, 2, 3]), 5)["item_id"].tolist()

    probe = (
        "import json, numpy as np; from inbo.settings import get_settings; from pipelines import registry;"
        "from models.als import ALSModel;"
        "path, v = registry.download(get_settings(), 'als', 'champion');"
        "recs = ALSModel.load(path).recommend(np.array([1, 2, 3]), 5);"
        "print(json.dumps({'version': v, 'items': recs['item_id'].tolist()}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "version": version,
        "items": expected,
    }
