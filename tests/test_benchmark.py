"""The benchmark command's library side: every dataset's rows, the printed table, MLflow runs.

The MovieLens-format and MIND-format samples are written by the tests (small worlds with a
known taste structure), so nothing here needs the shared datasets; the one test on the real
MovieLens-100k skips without it. The full MovieLens benchmark (about two minutes) is the
command `inbo evaluate --dataset movielens-100k`, not a test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from inbo import schemas, tables
from inbo.errors import ConfigError, DataNotFound
from inbo.lake import Lake, batch_end
from inbo.settings import Settings, get_settings
from models.als import ALSModel
from models.evaluation import evaluate, movielens_split
from models.reranker import DEFAULT_PARAMS
from pipelines.offline.datasets import MOVIELENS_DIR, load_movielens
from pipelines.offline.evaluate import EXPERIMENT, format_table, run_benchmark
from pipelines.offline.movielens import holdout_split, tune_als
from pipelines.validate import latest_validated_batch

GENRES = ("Action", "Comedy", "Drama", "Horror")
SCORED = (
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "map",
    "mrr_at_k",
    "hit_rate_at_k",
    "catalogue_coverage",
)


def write_movielens(folder: Path, users: int = 60, items: int = 48, seed: int = 3) -> Path:
    """A MovieLens-format folder. Each user mostly rates movies of one hidden taste group that
    spans every genre, so only collaborative models can find it (genre popularity cannot)."""
    rng = np.random.default_rng(seed)
    genre = np.arange(items) % len(GENRES)
    group = np.arange(items) * 4 // items
    folder.mkdir(parents=True)
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    lines = []
    for item in range(items):
        flags = "|".join("1" if g == genre[item] else "0" for g in range(len(GENRES)))
        title = f"{GENRES[genre[item]]} movie {item} ({1990 + item % 8})"
        lines.append(f"{item + 1}|{title}|01-Jan-{1990 + item % 8}||http://x/{item}|{flags}")
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    rows = []
    for user in range(users):
        liked = rng.choice(np.flatnonzero(group == user % 4), size=9, replace=False)
        other = rng.choice(np.flatnonzero(group != user % 4), size=3, replace=False)
        for item in (*liked, *other):
            ts = 880_000_000 + int(rng.integers(0, 10_000_000))
            rows.append(f"{user + 1}\t{item + 1}\t{int(rng.integers(1, 6))}\t{ts}")
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    return folder


def write_mind(folder: Path, users: int = 120, news: int = 60, seed: int = 5) -> Path:
    """A MIND-format folder over six days: users click their favourite category far more."""
    rng = np.random.default_rng(seed)
    categories = ("sports", "news", "finance")
    category = np.arange(news) % len(categories)
    folder.mkdir(parents=True)
    (folder / "news.tsv").write_text(
        "".join(
            f"N{i + 1}\t{categories[category[i]]}\tsub\t{categories[category[i]]} story {i}"
            f"\tAbout {categories[category[i]]}\thttp://x/{i}\t[]\t[]\n"
            for i in range(news)
        )
    )
    start = datetime(2019, 11, 9)
    behaviors, impression = [], 0
    for user in range(users):
        taste = np.flatnonzero(category == user % len(categories))
        history = " ".join(f"N{i + 1}" for i in rng.choice(taste, 4, replace=False))
        for _ in range(6):
            impression += 1
            when = start + timedelta(seconds=int(rng.integers(0, 6 * 86400)))
            shown = rng.choice(news, 8, replace=False)
            clicked = rng.random(8) < np.where(category[shown] == user % len(categories), 0.5, 0.05)
            tokens = " ".join(f"N{i + 1}-{int(c)}" for i, c in zip(shown, clicked, strict=True))
            stamp = when.strftime("%m/%d/%Y %I:%M:%S %p")
            behaviors.append(f"{impression}\tU{user + 1}\t{stamp}\t{history}\t{tokens}\n")
    (folder / "behaviors.tsv").write_text("".join(behaviors))
    return folder


@pytest.fixture(scope="module")
def benchmark_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings on a var/ of this module. MLflow exports MLFLOW_TRACKING_URI when connecting;
    setting it here first means the variable is removed again after the module."""
    settings = Settings(var_dir=tmp_path_factory.mktemp("bench") / "var")
    with pytest.MonkeyPatch.context() as patch:
        # one LightGBM thread: two spin-waiting threads crawl when other jobs hold a core
        patch.setitem(DEFAULT_PARAMS, "n_jobs", 1)
        (settings.var_dir / "mlflow").mkdir(parents=True)
        patch.setenv(
            "MLFLOW_TRACKING_URI", f"sqlite:///{settings.var_dir / 'mlflow' / 'mlflow.db'}"
        )
        get_settings.cache_clear()
        yield settings
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def movielens_table(
    tmp_path_factory: pytest.TempPathFactory, benchmark_settings: Settings
) -> pd.DataFrame:
    folder = write_movielens(tmp_path_factory.mktemp("movielens") / "ml-sample")
    return run_benchmark("movielens-100k", folder, k=10, settings=benchmark_settings)


def test_movielens_benchmark_has_one_row_per_model_with_sane_metrics(
    movielens_table: pd.DataFrame,
) -> None:
    table = movielens_table
    assert list(table.index) == ["popularity", "content", "als", "als + reranker"]
    assert table["users"].nunique() == 1 and 50 <= table["users"].iloc[0] <= 60
    assert (table["user_coverage"] == 1.0).all()
    assert ((table[list(SCORED)] >= 0) & (table[list(SCORED)] <= 1)).all().all()
    assert (table["intra_list_diversity"].between(0, 1)).all()
    assert (table["novelty"] > 0).all()
    assert (table["fit_seconds"] >= 0).all()
    # only the two ALS rows spent time choosing hyperparameters, and the same time
    assert table["tune_seconds"].isna().tolist() == [True, True, False, False]
    assert table.loc["als", "tune_seconds"] == table.loc["als + reranker", "tune_seconds"]
    assert table.attrs["split"] == "movielens-100k/item-stratified/binary"
    # the taste groups are strong: the collaborative models find them, popularity cannot
    for model in ("als", "als + reranker"):
        assert table.loc[model, "ndcg_at_k"] > table.loc["popularity", "ndcg_at_k"] + 0.1


def test_every_model_row_is_an_mlflow_run_with_params_and_metrics(
    movielens_table: pd.DataFrame, benchmark_settings: Settings
) -> None:
    import mlflow

    from pipelines.tracking import connect

    connect(benchmark_settings)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    by_model = {run.data.tags["model"]: run for run in runs}
    assert set(by_model) == set(movielens_table.index)
    als = by_model["als"]
    assert als.data.tags["dataset"] == "movielens-100k"
    assert {"factors", "regularization", "alpha", "iterations", "k"} <= set(als.data.params)
    assert als.data.metrics["ndcg_at_k"] == pytest.approx(movielens_table.loc["als", "ndcg_at_k"])
    assert len({run.data.tags["benchmark"] for run in runs}) == 1


def test_tuning_reads_only_the_training_side(tmp_path: Path) -> None:
    data = load_movielens(write_movielens(tmp_path / "ml"))
    split = movielens_split(data.ratings, data.items)
    validation = holdout_split(split.train)
    train_pairs = set(map(tuple, split.seen.to_numpy()))
    carved = set(map(tuple, validation.seen.to_numpy())) | set(
        map(tuple, validation.truth.to_numpy())
    )
    assert carved == train_pairs  # the validation problem is the training pairs, re-split
    assert carved.isdisjoint(map(tuple, split.truth[["user_id", "item_id"]].to_numpy()))
    grid = {"factors": (8,), "regularization": (1.0, 10.0), "alpha": (1.0,), "iterations": (5,)}
    tuned = tune_als(split.train, grid)
    assert len(tuned.table) == 2
    assert tuned.params in [
        {"factors": 8, "regularization": r, "alpha": 1.0, "iterations": 5} for r in (1.0, 10.0)
    ]
    assert tuned.score == tuned.table["ndcg_at_k"].max()


def test_mind_benchmark_includes_the_hybrid_learned_from_impressions(
    tmp_path: Path, benchmark_settings: Settings
) -> None:
    table = run_benchmark(
        "mind", write_mind(tmp_path / "mind"), log_to_mlflow=False, settings=benchmark_settings
    )
    assert list(table.index) == ["popularity", "content", "als", "hybrid"]
    assert table.attrs["split"].startswith("time/2019-11-13T00:00+48h")
    assert ((table[list(SCORED)] >= 0) & (table[list(SCORED)] <= 1)).all().all()
    assert (table["users"] > 0).all()


def test_unknown_datasets_and_a_mind_benchmark_without_a_folder_are_refused(
    benchmark_settings: Settings,
) -> None:
    with pytest.raises(ConfigError, match="unknown dataset"):
        run_benchmark("netflix", None, settings=benchmark_settings)
    with pytest.raises(ConfigError, match=r"news\.tsv"):
        run_benchmark("mind", None, settings=benchmark_settings)


def test_demo_reads_the_latest_validated_batch_and_its_validated_subscriptions_through_the_loader(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo benchmark splits the newest validated batch as `load_training_data` reads it:
    the validated subscriptions (not the staged ones), the batch's own embeddings."""
    import pipelines.offline.evaluate as offline

    lake = Lake(settings.lake)
    with pytest.raises(DataNotFound, match="inbo demo"):
        latest_validated_batch(lake)
    for batch in ("20261119T0000Z", "20261120T0000Z"):  # only the newer one has tables
        lake.write_json(json.dumps({"batch": batch}), tables.VALIDATE_REPORTS, batch)
    assert latest_validated_batch(lake) == "20261120T0000Z"

    batch, end = "20261120T0000Z", batch_end("20261120T0000Z")

    def subscriptions(user: int) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "user_id": [user],
                "publisher_id": [2],
                "subscribed_at": [pd.Timestamp("2026-11-01", tz="UTC")],
                "unsubscribed_at": [pd.NaT],
            }
        )
        return schemas.conform(frame, schemas.SUBSCRIPTIONS)

    lake.write_batch(subscriptions(1), tables.SUBSCRIPTIONS, batch)
    lake.write_batch(subscriptions(2), tables.staging("subscriptions"), batch)
    items = pd.DataFrame(
        {
            "item_id": [7],
            "publisher_id": [2],
            "publisher": "p",
            "title": "t",
            "description": "d",
            "category": "c",
            "tags": [[]],
            "published_at": [pd.Timestamp("2026-11-10", tz="UTC")],
            "language": "en",
        }
    )
    lake.write_batch(schemas.conform(items, schemas.ITEMS), tables.ITEMS, batch)
    lake.write_batch(schemas.empty(schemas.INTERACTIONS), tables.INTERACTIONS, batch)
    lake.write_batch(schemas.empty(schemas.CONTINUE_READING), tables.CONTINUE_READING, batch)
    vectors = pd.DataFrame(
        {"item_id": [7], "content_hash": "h", "model": "m", "embedding": [[0.6, 0.8]]}
    )
    lake.write_batch(schemas.conform(vectors, schemas.EMBEDDINGS), tables.EMBEDDINGS, batch)

    class Split(Exception):
        """Raised by the stand-in `time_split`: the test ends before any model is fitted."""

    seen: dict[str, Any] = {}

    def split(events: pd.DataFrame, items: pd.DataFrame, **kwargs: Any) -> None:
        seen.update(kwargs, items=items)
        raise Split

    monkeypatch.setattr(offline, "time_split", split)
    with pytest.raises(Split):
        offline.demo_benchmark(settings)
    assert seen["cutoff"] == end - timedelta(days=settings.holdout_days)
    assert seen["items"]["item_id"].tolist() == [7]
    assert seen["subscriptions"]["user_id"].tolist() == [1]  # the validated table, not staging
    assert seen["embeddings"]["item_id"].tolist() == [7]  # the batch's own, not re-encoded


def test_format_table_prints_a_markdown_table_with_dashes_for_missing_values() -> None:
    frame = pd.DataFrame(
        {
            "ndcg_at_k": [0.48504, 0.2384],
            "precision_at_k": [0.4218, 0.214],
            "tune_seconds": [43.94, np.nan],
            "fit_seconds": [0.63, 0.01],
            "users": [943, 943],
        },
        index=pd.Index(["als", "popularity"], name="model"),
    )
    frame.attrs.update(split="movielens-100k/item-stratified/binary", k=10)
    lines = format_table(frame).splitlines()
    assert lines[0] == "movielens-100k/item-stratified/binary (k=10)"
    assert lines[2] == "| model      | nDCG@10 |  P@10 | tune s | fit s |"
    assert lines[3] == "|------------|--------:|------:|-------:|------:|"
    assert lines[4] == "| als        |   0.485 | 0.422 |   43.9 |   0.6 |"
    assert lines[5].split("|")[4].strip() == "-"
    assert len({len(line) for line in lines[2:]}) == 1


@pytest.mark.skipif(
    not (MOVIELENS_DIR / "u.data").is_file(),
    reason=f"MovieLens-100k is not at {MOVIELENS_DIR} (it is read in place, never copied here)",
)
def test_als_with_the_recorded_tuned_parameters_beats_bivae_on_movielens() -> None:
    """The ALS row of docs/benchmarks.md: parameters chosen on validation, nDCG@10 on test."""
    data = load_movielens()
    split = movielens_split(data.ratings, data.items)
    als: dict[str, Any] = {"factors": 32, "regularization": 40.0, "alpha": 5.0, "iterations": 15}
    table = evaluate({"als": lambda: ALSModel(**als)}, split, metrics=("ndcg_at_k", "map"))
    assert table.loc["als", "ndcg_at_k"] == pytest.approx(0.4850, abs=0.002)
    assert table.loc["als", "ndcg_at_k"] > 0.475  # BiVAE, the best row of Microsoft's table
