"""Model behaviour on a generated world big enough to learn from (3,000 users, 28 days).

The nightly functions run for real (ingest, validate, interactions, MiniLM embeddings, ALS, content,
LightGBM), then: learned models beat popularity on the held-out window by a clear margin, a reader
of one category gets that category, and the promotion gate refuses a deliberately worse model.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inbo import schemas
from inbo.settings import Settings
from models.als import ALSModel
from models.base import TrainingData
from models.content import ContentModel
from models.evaluation import evaluate_model, time_split
from models.hybrid import HybridRecommender
from models.popularity import PopularityModel
from pipelines import promotion, registry
from pipelines.tracking import log_step_run
from pipelines.training_data import load_training_data

pytestmark = pytest.mark.e2e

END = datetime(2026, 11, 20, tzinfo=UTC)
HOLDOUT = timedelta(days=2)


@pytest.fixture(scope="module")
def big_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 3,000-user world through ingest, validate, interactions and embeddings, built once."""
    from features.embeddings import build_embeddings
    from features.interactions import build_interactions
    from pipelines.demo.simulate import simulate
    from pipelines.ingest import ingest
    from pipelines.validate import validate_batch

    var_dir = tmp_path_factory.mktemp("big") / "var"
    settings = Settings(var_dir=var_dir)  # passed to each step: no environment to restore
    simulate(settings.app_db, users=3000, items=800, days=28, seed=3,
             end=END.replace(tzinfo=None), truth_dir=var_dir / "simulation")  # fmt: skip
    ingest(END, settings)
    validate_batch(END, settings)
    build_interactions(END, settings)
    build_embeddings(END, settings)
    yield var_dir


@pytest.fixture(scope="module")
def big_data(big_world: Path) -> TrainingData:
    """The big world's nightly training data, read once (tests only read it)."""
    return load_training_data(Settings(var_dir=big_world), END)


@pytest.fixture(scope="module")
def split(big_data: TrainingData, big_world: Path):
    return time_split(
        big_data.events, big_data.items, END - HOLDOUT, HOLDOUT, settings=Settings(var_dir=big_world),
        subscriptions=big_data.subscriptions, embeddings=big_data.embeddings,
    )  # fmt: skip


def test_als_and_the_reranked_pipeline_beat_popularity_on_the_held_out_window(split) -> None:
    ndcg = {
        name: evaluate_model(name, factory, split)["ndcg_at_k"]
        for name, factory in {
            "popularity": PopularityModel,
            "als": ALSModel,
            "hybrid": HybridRecommender,
        }.items()
    }
    assert len(split.users) > 300
    assert ndcg["als"] >= ndcg["popularity"] * 1.15, ndcg
    assert ndcg["hybrid"] >= ndcg["popularity"] * 1.25, ndcg


def one_category_reader(data: TrainingData, category: str) -> tuple[TrainingData, int]:
    """`data` plus a new user who read six issues of `category` and nothing else."""
    user = int(data.interactions["user_id"].max()) + 1
    read = data.items[data.items["category"] == category].head(6)["item_id"]
    rows = pd.DataFrame(
        {
            "user_id": user, "item_id": read.to_numpy(), "weight": 3.0, "events": 2,
            "last_ts": pd.Timestamp(data.as_of) - pd.Timedelta(hours=6), "read_fraction": 1.0,
            "is_read": True, "dismissed": False,
        }
    )  # fmt: skip
    interactions = pd.concat(
        [data.interactions, schemas.conform(rows, schemas.INTERACTIONS)], ignore_index=True
    )
    return TrainingData(interactions, data.items, data.continue_reading, data.as_of,
                        data.events, data.subscriptions, data.embeddings), user  # fmt: skip


@pytest.mark.parametrize("model", ["als", "content", "popularity"])
def test_a_reader_of_one_category_is_recommended_mostly_that_category(
    big_data: TrainingData, model: str
) -> None:
    data, user = one_category_reader(big_data, "sport")
    factory = {"als": ALSModel, "content": ContentModel, "popularity": PopularityModel}[model]
    recs = factory().fit(data).recommend(np.array([user]), 10)
    categories = recs.merge(data.items[["item_id", "category"]], on="item_id")["category"]
    assert len(categories) == 10
    assert (categories == "sport").mean() >= 0.7, categories.value_counts().to_dict()


def test_the_gate_refuses_a_deliberately_worse_challenger(
    settings: Settings, split, tmp_path
) -> None:
    big = settings
    good = partial(ALSModel)
    bad = partial(ALSModel, factors=2, iterations=1, regularization=2000.0)
    scores = {
        name: evaluate_model(name, factory, split)["ndcg_at_k"]
        for name, factory in (("good", good), ("bad", bad))
    }
    assert scores["bad"] < scores["good"] - big.promotion_margin

    versions = {}
    for name, factory in (("good", good), ("bad", bad)):
        directory = tmp_path / name
        factory().fit(split.train).save(directory)
        run_id = log_step_run(big, f"als-{name}", name, {"variant": name}, {"ndcg": scores[name]})
        versions[name] = registry.register(big, "als", run_id, directory, name)

    first = promotion.gate(big, "als", versions["good"], scores["good"], None, big.promotion_margin)
    worse = promotion.gate(
        big, "als", versions["bad"], scores["bad"], scores["good"], big.promotion_margin
    )
    assert first.promoted and not worse.promoted
    assert registry.alias_version(big, "als", registry.CHAMPION) == versions["good"]
    assert registry.alias_version(big, "als", registry.CHALLENGER) == versions["bad"]


def test_a_champion_trained_like_tonight_is_not_refitted(tmp_path: Path) -> None:
    """Same parameters, same split, seeded fits: the champion's rows are tonight's, copied under
    the names the gate reads; a champion trained differently is evaluated on its own."""
    from pipelines.promotion import champion_rows, configurations, same_as_tonight

    settings = Settings(var_dir=tmp_path)
    same = dict(settings.als_params)
    other = {**same, "factors": same["factors"] * 2}
    assert same_as_tonight(settings, same) and not same_as_tonight(settings, other)
    assert "als@champion" not in configurations(settings, True, same)
    assert {"als@champion", "hybrid@champion"} <= set(configurations(settings, True, other))
    rows = [{"model": "als", "ndcg_at_k": 0.3}, {"model": "hybrid", "ndcg_at_k": 0.4}]
    assert champion_rows(rows) == [
        {"model": "als@champion", "ndcg_at_k": 0.3},
        {"model": "hybrid@champion", "ndcg_at_k": 0.4},
    ]
