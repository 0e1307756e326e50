"""The MLflow registry: versions, aliases, the promotion gate, what a version records, and loading
in a fresh process."""

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
from inbo.errors import ConfigError, InboError
from inbo.settings import Settings
from models.als import ALSModel
from models.base import TrainingData
from pipelines import promotion, registry, tracking
from pipelines.tracking import log_step_run

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)


def fitted_als(tmp: Path, seed: int = 0) -> tuple[ALSModel, Path]:
    """A small ALS (39 users, 60 items) fitted and saved in a new folder under `tmp`."""
    rng = np.random.default_rng(seed)
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
    directory = tmp / f"als-{len(list(tmp.iterdir()))}"
    model.save(directory)
    return model, directory


def register_one(settings: Settings, tmp: Path, batch: str, seed: int = 0) -> int:
    _, directory = fitted_als(tmp, seed)
    return register_dir(settings, directory, batch)


def register_dir(settings: Settings, directory: Path, batch: str) -> int:
    params = {"factors": 8, "data_window_start": "2026-10-21", "data_window_end": "2026-11-20"}
    run_id = log_step_run(settings, "als", batch, params, {"users": 39.0})
    return registry.register(settings, "als", run_id, directory, batch)


def test_first_model_is_promoted_and_loads_in_a_fresh_process(
    settings: Settings, tmp_path: Path
) -> None:
    model, directory = fitted_als(tmp_path)
    run_id = log_step_run(settings, "als", "b1", model.params, {"users": 39.0})
    version = registry.register(settings, "als", run_id, directory, "b1")
    assert registry.alias_version(settings, "als", registry.CHALLENGER) == version
    decision = promotion.gate(settings, "als", version, 0.2, None, margin=0.01)
    assert decision.promoted and "first model" in decision.reason
    assert registry.alias_version(settings, "als", registry.CHAMPION) == version
    expected = model.recommend(np.array([1, 2, 3]), 5)["item_id"].tolist()

    probe = (
        "import json, numpy as np; from inbo.settings import get_settings; from pipelines import registry;"
        "als = registry.load_als(get_settings(), 'champion');"
        "recs = als.recommend(np.array([1, 2, 3]), 5);"
        "print(json.dumps({'items': recs['item_id'].tolist()}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"items": expected}


def test_registering_the_same_run_and_batch_twice_keeps_one_version(
    settings: Settings, tmp_path: Path
) -> None:
    _, directory = fitted_als(tmp_path)
    run_id = log_step_run(settings, "als", "b1", {"factors": 8}, {"users": 39.0})
    first = registry.register(settings, "als", run_id, directory, "b1")
    again = registry.register(settings, "als", run_id, directory, "b1")
    assert first == again
    assert [row.version for row in registry.list_models(settings)] == [first]


def test_gate_refuses_a_worse_challenger_and_keeps_the_champion(
    settings: Settings, tmp_path: Path
) -> None:
    champion = register_one(settings, tmp_path, "b1")
    promotion.gate(settings, "als", champion, 0.40, None, margin=0.01)
    worse = register_one(settings, tmp_path, "b2", seed=1)
    decision = promotion.gate(settings, "als", worse, 0.30, 0.40, margin=0.01)
    assert not decision.promoted and decision.champion == champion
    assert registry.alias_version(settings, "als", registry.CHAMPION) == champion
    assert registry.alias_version(settings, "als", registry.CHALLENGER) == worse

    close = register_one(settings, tmp_path, "b3", seed=2)
    assert promotion.gate(settings, "als", close, 0.395, 0.40, margin=0.01).promoted
    assert registry.alias_version(settings, "als", registry.CHAMPION) == close


def test_a_version_records_its_signature_requirements_and_the_gates_decision(
    settings: Settings, tmp_path: Path
) -> None:
    """What an ML engineer reads on the version page: signature, input example, pinned
    requirements, tags and a description with the batch, window, held-out scores and decision."""
    from importlib.metadata import version as installed

    import mlflow

    first = register_one(settings, tmp_path, "b1")
    promotion.gate(settings, "als", first, 0.40, None, margin=0.01)
    second = register_one(settings, tmp_path, "20261121T0000Z", seed=1)
    run_id = registry.version_run(settings, "als", second).run_id
    tracking.log_to_run(
        settings, run_id, {"k": 10, "holdout_split": "time/2026-11-19T00:00+48h"},
        {"ndcg_at_10": 0.30, "recall_at_10": 0.25, "map_at_10": 0.12},
    )  # fmt: skip
    promotion.gate(settings, "als", second, 0.30, 0.40, margin=0.01)

    client = tracking.connect(settings)
    found = client.get_model_version("inbo-als", str(second))
    assert (
        found.tags["gate.decision"] == "kept" and "< champion 0.4000" in found.tags["gate.reason"]
    )
    assert found.tags["batch"] == "20261121T0000Z"
    for part in ("`20261121T0000Z`", "2026-10-21 to 2026-11-20", "ndcg_at_10 0.3000",
                 "recall_at_10 0.2500", "k=10", f"Champion v{first}", "**kept**"):  # fmt: skip
        assert part in found.description, (part, found.description)
    assert "champion" in client.get_registered_model("inbo-als").description

    info = mlflow.models.get_model_info(f"models:/inbo-als/{second}")
    assert info.signature.inputs.input_names() == ["user_id"]
    assert {"item_id", "score", "reason_code"} <= set(info.signature.outputs.input_names())
    assert info.signature.params is not None and info.signature.params.params[0].name == "n"
    root = Path(mlflow.artifacts.download_artifacts(f"models:/inbo-als/{second}"))
    requirements = (root / "requirements.txt").read_text().split()
    assert f"implicit=={installed('implicit')}" in requirements
    assert f"scipy=={installed('scipy')}" in requirements
    assert (root / "input_example.json").exists()


def test_the_pyfunc_of_a_version_recommends_like_the_model(
    settings: Settings, tmp_path: Path
) -> None:
    import mlflow

    model, directory = fitted_als(tmp_path)
    run_id = log_step_run(settings, "als", "b1", model.params, {"users": 39.0})
    version = registry.register(settings, "als", run_id, directory, "b1")
    registry.promote(settings, "als", version)
    pyfunc = mlflow.pyfunc.load_model("models:/inbo-als@champion")
    answer = pyfunc.predict(pd.DataFrame({"user_id": [1, 2]}), params={"n": 4})
    expected = model.recommend(np.array([1, 2]), 4)
    assert answer["item_id"].tolist() == expected["item_id"].tolist()


def test_setting_the_alias_in_the_mlflow_ui_drives_what_is_published(
    settings: Settings, tmp_path: Path
) -> None:
    """The UI's "add alias" is `set_registered_model_alias`: scoring pins and loads that version."""
    from pipelines.score import champion_versions, pinned_parts

    first = register_one(settings, tmp_path, "b1")
    promotion.gate(settings, "als", first, 0.40, None, margin=0.01)
    model, directory = fitted_als(tmp_path, seed=1)
    second = register_dir(settings, directory, "b2")
    promotion.gate(settings, "als", second, 0.10, 0.40, margin=0.01)
    assert champion_versions(settings) == {"als": first}

    tracking.connect(settings).set_registered_model_alias("inbo-als", "champion", str(second))
    assert champion_versions(settings) == {"als": second}
    als, reranker = pinned_parts(settings, champion_versions(settings))
    assert als is not None and reranker is None
    assert np.array_equal(als.als.item_factors, model.als.item_factors)


def test_unknown_aliases_versions_and_kinds_are_named(settings: Settings, tmp_path: Path) -> None:
    version = register_one(settings, tmp_path, "b1")
    with pytest.raises(InboError, match="alias 'no-such-alias'"):
        registry.load_als(settings, "no-such-alias")
    with pytest.raises(InboError, match=f"no version {version + 1}"):
        registry.promote(settings, "als", version + 1)
    with pytest.raises(ConfigError, match="known: als, reranker"):
        registry.registered_name("popularity")
