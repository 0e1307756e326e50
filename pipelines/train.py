"""Train: fit the batch's models on its feature tables, save them, log them to MLflow.

The nightly DAG's `fit_baselines`, `train_als` and `train_reranker` tasks. Each step saves under
`var/models/<batch>/<model>` and logs one MLflow run per (step, batch), so a re-run of a night
resumes its run and returns the same run id.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from features.interactions import Recipe
from inbo import tables
from inbo.errors import ModelCannotFit, NoPositiveExamples
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from models.als import ALSModel
from models.content import ContentModel
from models.continue_reading import ContinueReadingModel
from models.hybrid import learn_reranker
from models.popularity import PopularityModel
from pipelines.tracking import log_step_run
from pipelines.training_data import load_training_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModels:
    """Where a step saved its model and its MLflow run; both empty when it had too little data."""

    batch: str
    directory: str
    run_id: str


def window_params(settings: Settings, as_of: datetime) -> dict[str, object]:
    return {
        "data_window_start": (as_of - timedelta(days=settings.history_days)).isoformat(),
        "data_window_end": as_of.isoformat(),
        "history_days": settings.history_days,
        "half_life_days": settings.popularity_half_life_days,
    }


def fit_baselines(interval_end: datetime, settings: Settings | None = None) -> TrainedModels:
    """Popularity, continue reading and (when the batch has embeddings) content similarity."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    data = load_training_data(settings, interval_end, events=False)
    directory = settings.model_dir(batch)
    PopularityModel().fit(data).save(directory / "popularity")
    ContinueReadingModel().fit(data).save(directory / "continue_reading")
    fitted = ["popularity", "continue_reading"]
    if data.embeddings is not None:
        content = ContentModel().fit(data)
        content.save(directory / "content")
        Lake(settings.lake).write_batch(content.more_like_this(10), tables.MORE_LIKE_THIS, batch)
        fitted.append("content")
    run_id = log_step_run(
        settings,
        step="baselines",
        batch=batch,
        params={"models": ",".join(fitted), **window_params(settings, interval_end)},
        metrics={
            "users": float(data.interactions["user_id"].nunique()),
            "items": float(len(data.items)),
            "pairs": float(len(data.interactions)),
            "continue_reading": float(len(data.continue_reading)),
        },
        artifacts=directory,
    )
    return TrainedModels(batch=batch, directory=str(directory), run_id=run_id)


def train_als(interval_end: datetime, settings: Settings | None = None) -> TrainedModels:
    """ALS on the batch's interaction table; saved with its id mappings and logged to MLflow."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    data = load_training_data(settings, interval_end, events=False)
    directory = settings.model_dir(batch) / "als"
    started = time.perf_counter()
    model = ALSModel(**settings.als_params).fit(data)
    seconds = time.perf_counter() - started
    model.save(directory)
    run_id = log_step_run(
        settings,
        step="als",
        batch=batch,
        params={**model.params, **window_params(settings, interval_end)},
        metrics={
            "fit_seconds": seconds,
            "users": float(len(model.users)),
            "items": float(len(model.items)),
            "nonzeros": float(model.confidence.nnz),
        },
        artifacts=directory,
    )
    return TrainedModels(batch=batch, directory=str(directory), run_id=run_id)


def train_reranker(interval_end: datetime, settings: Settings | None = None) -> TrainedModels:
    """LightGBM LambdaRank on the impressions of the last label days before the batch end."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    data = load_training_data(settings, interval_end)
    directory = settings.model_dir(batch) / "reranker"
    started = time.perf_counter()
    try:
        reranker, examples = learn_reranker(
            data,
            settings.reranker_label_days,
            settings.als_params,
            settings.candidates_per_source,
            Recipe.from_settings(settings),
            max_users=settings.reranker_max_users,
        )
    except (NoPositiveExamples, ModelCannotFit) as exc:
        log.warning("no reranker for batch %s: %s; the champion (if any) keeps serving", batch, exc)
        return TrainedModels(batch=batch, directory="", run_id="")
    seconds = time.perf_counter() - started
    reranker.save(directory)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch)
        reranker.save(report / "model")
        reranker.feature_importance().to_csv(report / "feature_importance.csv", index=False)
        run_id = log_step_run(
            settings,
            step="reranker",
            batch=batch,
            params={
                **reranker.params,
                "features": len(reranker.features),
                "label_days": settings.reranker_label_days,
                "max_users": settings.reranker_max_users,
                **window_params(settings, interval_end),
            },
            metrics={
                "fit_seconds": seconds,
                "examples": float(len(examples)),
                "positives": float((examples["label"] > 0).sum()),
                "users": float(examples["user_id"].nunique()),
            },
            artifacts=report,
        )
    return TrainedModels(batch=batch, directory=str(directory), run_id=run_id)


def train_all(interval_end: datetime, settings: Settings | None = None) -> list[TrainedModels]:
    """Every training step of the night in order, in this process (`inbo train`, notebooks)."""
    settings = settings or get_settings()
    return [step(interval_end, settings) for step in (fit_baselines, train_als, train_reranker)]
