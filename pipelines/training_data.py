"""The one loader of what models learn from and score with: a batch's lake tables as `TrainingData`.

Training, the held-out evaluation, `inbo explain`, shard scoring, the hourly refresh and the
offline demo benchmark all read their data here, so they see the same window, columns and tables.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.embeddings import latest_table_batch
from features.interactions import MODEL_EVENT_COLUMNS, Recipe, load_events
from inbo import tables
from inbo.lake import Lake, batch_key
from inbo.settings import Settings
from models.base import TrainingData


class Embeddings(StrEnum):
    """Which item embeddings to load: the batch's own table, the newest up to the batch (hourly
    batches write one only when an issue is new), or none (scoring uses the saved models')."""

    BATCH = "batch"
    LATEST = "latest"
    NONE = "none"


def event_window(settings: Settings, as_of: datetime) -> tuple[datetime, datetime]:
    """The events a batch at `as_of` reads: twice the history, so the reranker's earlier cutoff
    and the held-out split still see a whole history window behind them."""
    return as_of - timedelta(days=2 * settings.history_days), as_of


def load_training_data(
    settings: Settings,
    as_of: datetime,
    *,
    events: bool = True,
    users: np.ndarray | None = None,
    rebuild: bool = False,
    embeddings: Embeddings = Embeddings.BATCH,
) -> TrainingData:
    """Everything the batch ending at `as_of` may learn from (strictly before `as_of`).

    `events=False` skips the raw events: only the reranker, evaluation and scoring read them, and
    at a million users they are gigabytes the candidate sources never touch. `users` keeps only
    those users' rows (the catalogue stays whole). `rebuild` computes the interaction and
    continue-reading tables from the events with the nightly's `Recipe` instead of reading the
    batch's (the hourly refresh, whose batches have none).
    """
    lake = Lake(settings.lake)
    batch = batch_key(as_of)
    mine = None if users is None else pc.field("user_id").isin(pa.array(users, pa.int64()))
    raw = None
    if events or rebuild:
        raw, _ = load_events(lake, *event_window(settings, as_of), mine, MODEL_EVENT_COLUMNS)
    if rebuild and raw is not None:
        interactions, started = Recipe.from_settings(settings).tables(raw, as_of)
    else:
        interactions = lake.read_batch(tables.INTERACTIONS, batch, mine)
        started = lake.read_batch(tables.CONTINUE_READING, batch, mine)
    return TrainingData(
        interactions=interactions,
        items=lake.read_batch(tables.ITEMS, batch),
        continue_reading=started,
        as_of=as_of,
        events=raw if events else None,
        subscriptions=lake.read_batch(tables.SUBSCRIPTIONS, batch, mine),
        embeddings=_embeddings(lake, batch, embeddings),
    )


def _embeddings(lake: Lake, batch: str, which: Embeddings) -> pd.DataFrame | None:
    if which is Embeddings.NONE:
        return None
    source = batch if which is Embeddings.BATCH else latest_table_batch(lake, batch)
    if source is None or not lake.has_batch(tables.EMBEDDINGS, source):
        return None
    return lake.read_batch(tables.EMBEDDINGS, source)
