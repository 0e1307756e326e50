"""Benchmarks: every model family on one dataset, as `inbo evaluate --dataset ...` runs them.

`run_benchmark` builds a dataset's evaluation split, fits each model on its training side with the
harness of `models.evaluation`, and returns one row per model (metrics and wall times), logging
each row as an MLflow run of the "inbo-evaluation" experiment.

- `movielens-100k`: Microsoft Recommenders' protocol (`movielens_split`: stratified by item,
  seed 42, top 10, training items removed), so our rows sit beside their published table.
  Models: popularity, content (all-MiniLM-L6-v2 on title + genres), ALS with hyperparameters
  chosen on a validation split carved from the training ratings (`tune_als`), and ALS +
  reranker (`RerankedALS`): LightGBM LambdaRank over ALS and EASE candidates, learned on a
  validation carve of the training ratings. The test ratings are only ever used to score.
- `demo`: the platform's own time split on the lake's latest validated batch: fit at
  end - holdout, score the clicks and reads of the holdout. Popularity, content, ALS (the
  production parameters) and the production `HybridRecommender`.
- `mind PATH`: a MIND-format folder through the same time split; the hybrid learns from its
  impressions.

See docs/benchmarks.md for the measured tables and the protocol notes.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inbo.errors import ConfigError
from inbo.settings import Settings, get_settings
from models import metrics as m
from models.als import ALSModel
from models.evaluation import (
    ModelFactory,
    Split,
    evaluate,
    movielens_split,
    time_split,
)
from pipelines.offline.movielens import (
    CANDIDATES,
    EASE_LAMBDA,
    RERANKER_PARAMS,
    RerankedALS,
    genre_vectors,
    tune_als,
)
from pipelines.offline.names import Dataset

log = logging.getLogger(__name__)

EXPERIMENT = "inbo-evaluation"


TABLE_COLUMNS: dict[str, str] = {
    "ndcg_at_k": "nDCG@{k}",
    "precision_at_k": "P@{k}",
    "recall_at_k": "R@{k}",
    "map": "MAP",
    "mrr_at_k": "MRR@{k}",
    "hit_rate_at_k": "HR@{k}",
    "catalogue_coverage": "coverage",
    "novelty": "novelty",
    "intra_list_diversity": "diversity",
    "tune_seconds": "tune s",
    "fit_seconds": "fit s",
}
"""The columns `format_table` prints, with their headers ({k} is the list length)."""


@dataclass(frozen=True)
class Benchmark:
    """One dataset's evaluation problem: the split, the models and what to record about them."""

    dataset: str
    split: Split
    models: dict[str, ModelFactory]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model, the hyperparameters logged to MLflow."""
    tune_seconds: dict[str, float] = field(default_factory=dict)
    """Per model, time spent choosing hyperparameters on validation before the final fit."""
    item_vectors: pd.DataFrame | None = None
    """Vectors the diversity metric compares (the items' categories when None)."""
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per model, text files logged with its run (file name -> content)."""


# -- entry points ----------------------------------------------------------------------------------


def run_benchmark(
    dataset: str,
    path: Path | None,
    k: int = m.DEFAULT_K,
    log_to_mlflow: bool = True,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Evaluate every model of `dataset` and return one row per model (index `model`).

    `path` is the dataset folder: MovieLens' (default `pipelines.offline.datasets.MOVIELENS_DIR`), MIND's
    (required); the demo reads the lake of `settings`. Columns: the metrics of
    `models.evaluation.DEFAULT_METRICS`, `users`, `user_coverage`, `tune_seconds`,
    `fit_seconds`, `recommend_seconds`. `frame.attrs` holds the dataset and split names.
    """
    settings = settings or get_settings()
    bench = build_benchmark(dataset, path, k, settings)
    log.info("benchmark %s: %s, models %s", dataset, bench.split.name, list(bench.models))
    table = evaluate(bench.models, bench.split, k=k, item_vectors=bench.item_vectors)
    table.insert(
        table.columns.get_loc("fit_seconds"),
        "tune_seconds",
        [bench.tune_seconds.get(str(name), np.nan) for name in table.index],
    )
    table.attrs.update(dataset=dataset, split=bench.split.name, k=k)
    if log_to_mlflow:
        log_runs(table, bench, settings)
    return table


def build_benchmark(dataset: str, path: Path | None, k: int, settings: Settings) -> Benchmark:
    """The split and models of `dataset` (a `Dataset` name)."""
    if dataset == Dataset.MOVIELENS_100K:
        return movielens_benchmark(path, k, settings)
    if dataset == Dataset.DEMO:
        return demo_benchmark(settings)
    if dataset == Dataset.MIND:
        if path is None:
            raise ConfigError("the mind benchmark needs the folder of news.tsv and behaviors.tsv")
        return mind_benchmark(path, settings)
    raise ConfigError(
        f"unknown dataset {dataset!r}; choose one of {', '.join(d.value for d in Dataset)}"
    )


def format_table(frame: pd.DataFrame) -> str:
    """The benchmark rows as a Markdown table: metrics to 3 decimals, seconds to 1."""
    k = int(frame.attrs.get("k", m.DEFAULT_K))
    columns = [name for name in TABLE_COLUMNS if name in frame.columns]
    headers = ["model", *(TABLE_COLUMNS[name].format(k=k) for name in columns)]
    rows = [
        [str(model), *(_cell(name, row[name]) for name in columns)]
        for model, row in frame.iterrows()
    ]
    widths = [max(len(line[i]) for line in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join("-" * (width + 1) + (":" if i else "-") for i, width in enumerate(widths))
        + "|"
    )
    title = [f"{frame.attrs['split']} (k={k})", ""] if "split" in frame.attrs else []
    return "\n".join([*title, line(headers), rule, *(line(row) for row in rows)])


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.1f}" if column.endswith("_seconds") else f"{value:.3f}"


# -- MovieLens-100k --------------------------------------------------------------------------------


def movielens_benchmark(path: Path | None, k: int, settings: Settings) -> Benchmark:
    """Microsoft's MovieLens-100k protocol with our four model families."""
    from models.content import ContentModel
    from models.popularity import PopularityModel
    from pipelines.offline.datasets import load_movielens

    data = load_movielens(path)
    split = movielens_split(data.ratings, data.items, by="item", weight="binary")
    embeddings = item_embeddings(data.items, "movielens-100k", settings)
    tuned = tune_als(split.train, k=k)
    return Benchmark(
        dataset="movielens-100k",
        split=split,
        models={
            "popularity": PopularityModel,
            "content": functools.partial(ContentModel, embeddings=embeddings),
            "als": functools.partial(ALSModel, **tuned.params),
            "als + reranker": functools.partial(
                RerankedALS, als_params=tuned.params, embeddings=embeddings
            ),
        },
        params={
            "popularity": {"top_categories": 3},
            "content": {"encoder": "all-MiniLM-L6-v2", "text": "title + genres"},
            "als": {**tuned.params, "validation_ndcg": tuned.score},
            "als + reranker": {
                **{f"als_{name}": value for name, value in tuned.params.items()},
                "candidates": CANDIDATES,
                "ease_lambda": EASE_LAMBDA,
                **{f"lgbm_{name}": value for name, value in RERANKER_PARAMS.items()},
            },
        },
        tune_seconds={"als": tuned.seconds, "als + reranker": tuned.seconds},
        item_vectors=genre_vectors(data.items),
        artifacts={"als": {"als_validation_grid.csv": tuned.table.to_csv(index=False)}},
    )


def item_embeddings(items: pd.DataFrame, dataset: str, settings: Settings) -> pd.DataFrame:
    """all-MiniLM-L6-v2 vectors of the items, cached in var/benchmarks by content hash."""
    from features.embeddings import encode_items
    from inbo.lake import Lake
    from inbo.schemas import EMBEDDINGS

    cache = Lake(str(settings.var_dir / "benchmarks"))
    name = dataset.replace("/", "_")
    known = cache.exists("embeddings", None, name)
    encoded = encode_items(items, cache.read("embeddings", None, name) if known else None)
    if encoded.encoded:
        cache.write(encoded.frame, "embeddings", name, None, EMBEDDINGS)
    log.info("%s embeddings: %d encoded, %d cached", dataset, encoded.encoded, encoded.reused)
    return encoded.frame


# -- the platform's own data -----------------------------------------------------------------------


def demo_benchmark(settings: Settings) -> Benchmark:
    """The time split on the lake's latest validated batch: fit at end - holdout, score the rest."""
    from inbo.lake import Lake, batch_end
    from pipelines.training_data import load_training_data
    from pipelines.validate import latest_validated_batch

    end = batch_end(latest_validated_batch(Lake(settings.lake)))
    data = load_training_data(settings, end)
    holdout = timedelta(days=settings.holdout_days)
    split = time_split(
        data.events,
        data.items,
        cutoff=end - holdout,
        window=holdout,
        settings=settings,
        subscriptions=data.subscriptions,
        embeddings=data.embeddings
        if data.embeddings is not None
        else item_embeddings(data.items, "demo", settings),
    )
    return _platform_benchmark("demo", split, settings, hybrid=True)


def mind_benchmark(path: Path, settings: Settings) -> Benchmark:
    """A MIND-format folder through the time split: the last `holdout_days` of its log scored."""
    from inbo import schemas
    from pipelines.offline.datasets import load_mind

    mind = load_mind(path)
    clicks = mind.events[mind.events["event_type"] != "read"]
    end = clicks["ts"].max().ceil("D")
    holdout = timedelta(days=settings.holdout_days)
    if end - holdout <= clicks["ts"].min():
        raise ConfigError(
            f"the MIND log {clicks['ts'].min()} .. {end} is shorter than the holdout of "
            f"{settings.holdout_days} days; lower INBO_HOLDOUT_DAYS"
        )
    embeddings = item_embeddings(mind.items, f"mind-{Path(path).name}", settings)
    split = time_split(
        mind.events,
        mind.items,
        cutoff=(end - holdout).to_pydatetime(),
        window=holdout,
        settings=settings,
        subscriptions=schemas.empty(schemas.SUBSCRIPTIONS),  # MIND has none
        embeddings=embeddings,
    )
    has_impressions = bool((mind.events["event_type"] == "impression").any())
    if not has_impressions:
        log.warning("the MIND folder has no impressions: the hybrid's reranker is left out")
    return _platform_benchmark("mind", split, settings, hybrid=has_impressions)


def _platform_benchmark(dataset: str, split: Split, settings: Settings, hybrid: bool) -> Benchmark:
    """Popularity, content, ALS and (when it can learn) the hybrid, fitted as the nightly batch."""
    from features.interactions import Recipe
    from models.content import ContentModel
    from models.hybrid import HybridRecommender
    from models.popularity import PopularityModel

    als_params = dict(settings.als_params)
    models: dict[str, ModelFactory] = {
        "popularity": PopularityModel,
        "content": ContentModel,
        "als": functools.partial(ALSModel, **als_params),
    }
    params: dict[str, dict[str, Any]] = {"popularity": {}, "content": {}, "als": als_params}
    if hybrid:
        hybrid_params: dict[str, Any] = {
            "als_params": als_params,
            "label_days": settings.reranker_label_days,
            "per_source": settings.candidates_per_source,
            "recipe": Recipe.from_settings(settings),
        }
        models["hybrid"] = functools.partial(HybridRecommender, **hybrid_params)
        params["hybrid"] = hybrid_params
    return Benchmark(dataset=dataset, split=split, models=models, params=params)


# -- MLflow ----------------------------------------------------------------------------------------


def log_runs(table: pd.DataFrame, bench: Benchmark, settings: Settings) -> list[str]:
    """One MLflow run per model row in the "inbo-evaluation" experiment; returns the run ids."""
    import mlflow

    from pipelines.tracking import experiment_id, git_commit

    experiment = experiment_id(settings, EXPERIMENT)
    k = int(table.attrs.get("k", m.DEFAULT_K))
    invocation = uuid.uuid4().hex[:12]
    train = bench.split.train
    run_ids = []
    for model, row in table.iterrows():
        with mlflow.start_run(experiment_id=experiment, run_name=f"{bench.dataset}/{model}") as run:
            mlflow.set_tags(
                {
                    "dataset": bench.dataset,
                    "model": str(model),
                    "split": bench.split.name,
                    "benchmark": invocation,
                    "mlflow.source.git.commit": git_commit(),
                }
            )
            mlflow.log_params(
                {
                    "k": k,
                    "as_of": pd.Timestamp(train.as_of).isoformat(),
                    "train_pairs": len(train.interactions),
                    "truth_pairs": len(bench.split.truth),
                    **{
                        name: str(value)[:500]
                        for name, value in bench.params.get(str(model), {}).items()
                    },
                }
            )
            mlflow.log_metrics(
                {name: float(value) for name, value in row.items() if np.isfinite(value)}
            )
            for file_name, text in bench.artifacts.get(str(model), {}).items():
                mlflow.log_text(text, file_name)
            run_ids.append(str(run.info.run_id))
    log.info("logged %d runs to MLflow experiment %s", len(run_ids), EXPERIMENT)
    return run_ids
