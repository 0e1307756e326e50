"""Train: fit the batch's recommenders on its feature tables, save them, log them to MLflow."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from inbo import schemas
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from models.base import TrainingData
from models.factory import create
from pipelines.tracking import log_step_run

log = logging.getLogger(__name__)

BASELINES = ("popularity", "continue_reading")


@dataclass(frozen=True)
class TrainedModels:
    batch: str
    directory: str
    run_id: str


def model_dir(settings: Settings, batch: str) -> Path:
    """Where a batch's fitted models are saved (and logged from)."""
    return settings.var_dir / "models" / batch


def load_training_data(lake: Lake, batch: str, as_of: datetime) -> TrainingData:
    return TrainingData(
        interactions=lake.read(
            "features/interactions", {"batch": batch}, "part", schemas.INTERACTIONS
        ),
        items=lake.read("items", {"batch": batch}, "part", schemas.ITEMS),
        continue_reading=lake.read(
            "features/continue_reading", {"batch": batch}, "part", schemas.CONTINUE_READING
        ),
        as_of=as_of,
    )


def fit_baselines(interval_end: datetime, settings: Settings | None = None) -> TrainedModels:
    """Fit popularity and continue reading for the batch; return where they are and the run id."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    data = load_training_data(Lake(settings.lake), batch, interval_end)
    directory = model_dir(settings, batch)
    for name in BASELINES:
        create(name).fit(data).save(directory / name)
    run_id = log_step_run(
        settings,
        step="baselines",
        batch=batch,
        params={
            "models": ",".join(BASELINES),
            "half_life_days": settings.popularity_half_life_days,
            "history_days": settings.history_days,
            "data_window_end": interval_end.isoformat(),
        },
        metrics={
            "users": float(data.interactions["user_id"].nunique()),
            "items": float(len(data.items)),
            "pairs": float(len(data.interactions)),
            "continue_reading": float(len(data.continue_reading)),
        },
        artifacts=directory,
    )
    return TrainedModels(batch=batch, directory=str(directory), run_id=run_id)
