"""The interaction table: one row per (user, item) over the history window, the input of every model.

Events are deduplicated by `event_id` across all batches (a re-delivered or re-ingested event
counts once), weighted by type and by time decay, and summed. The same pass also yields the
continue-reading table: issues a user started recently but did not finish.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from inbo import schemas, tables
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings

log = logging.getLogger(__name__)

EVENT_WEIGHTS: dict[str, float] = {
    "impression": 0.0,
    "open": 0.5,
    "click": 1.0,
    "read": 2.0,
    "save": 3.0,
    "share": 3.0,
    "subscribe": 2.0,
    "dismiss": -2.0,
    "unsubscribe": -1.0,
}
"""How much each event says about a user's interest; a read also scales with its read fraction."""

MODEL_EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "ts",
    "read_fraction",
)
"""The event columns the interaction recipe, the ranking features, activity and evaluation read;
the rest (session, device, surface...) is for analytics and is not loaded to train or score."""


@dataclass(frozen=True)
class Recipe:
    """How a batch turns its events into interaction and continue-reading tables.

    One object so the nightly batch, the held-out evaluation and the reranker's earlier cutoff
    rebuild the tables the same way.
    """

    history_days: int = 30
    half_life_days: float = 7.0
    started_at: float = 0.05
    read_at: float = 0.9
    started_days: int = 14

    @classmethod
    def from_settings(cls, settings: Settings) -> Recipe:
        return cls(
            history_days=settings.history_days,
            half_life_days=settings.popularity_half_life_days,
            started_at=settings.continue_reading_min,
            read_at=settings.continue_reading_max,
            started_days=settings.continue_reading_days,
        )

    def window(self, events: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
        """The events a batch ending at `as_of` looks at."""
        end = pd.Timestamp(as_of)
        return events[
            (events["ts"] >= end - timedelta(days=self.history_days)) & (events["ts"] < end)
        ]

    def tables(self, events: pd.DataFrame, as_of: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(interactions, continue reading) of the batch ending at `as_of`, from `events` in its window."""
        window = self.window(events, as_of)
        pairs = aggregate(window, as_of, self.half_life_days, self.read_at)
        started = continue_reading(window, as_of, self.started_at, self.read_at, self.started_days)
        return pairs, started


@dataclass(frozen=True)
class InteractionStats:
    batch: str
    events: int
    duplicates: int
    users: int
    items: int
    pairs: int
    continue_reading: int


def load_events(
    lake: Lake,
    start: datetime,
    end: datetime,
    filters: pc.Expression | None = None,
    columns: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, int]:
    """Clean events with start <= ts < end, each event_id once; also how many duplicates were dropped.

    `filters` (e.g. one user shard's ids) is applied while reading and only `columns` are read
    (`MODEL_EVENT_COLUMNS` is what models and features need), to bound memory.
    """
    days = pd.date_range(start.date(), end.date(), freq="D")
    paths = [
        path
        for day in days
        for path in lake.files(tables.USER_EVENTS.path, f"date={day:%Y-%m-%d}/*.parquet")
    ]
    if columns is not None:
        columns = list(dict.fromkeys(["event_id", "ts", *columns]))  # to deduplicate and cut
    events = lake.read_files(paths, schemas.USER_EVENTS, filters, columns)
    events = events[(events["ts"] >= pd.Timestamp(start)) & (events["ts"] < pd.Timestamp(end))]
    unique = events.drop_duplicates("event_id", keep="first")
    return unique.reset_index(drop=True), len(events) - len(unique)


def event_weights(events: pd.DataFrame, as_of: datetime, half_life_days: float) -> pd.Series:
    """Type weight x read-fraction boost x exponential time decay, per event."""
    base = events["event_type"].map(EVENT_WEIGHTS).astype(float)
    boost = np.where(events["event_type"] == "read", 0.5 + events["read_fraction"].fillna(0.5), 1.0)
    age_days = (pd.Timestamp(as_of) - events["ts"]).dt.total_seconds() / 86400.0
    decay = np.power(0.5, age_days.clip(lower=0) / half_life_days)
    return base * boost * decay


def aggregate(
    events: pd.DataFrame, as_of: datetime, half_life_days: float, read_at: float
) -> pd.DataFrame:
    """Sum weighted events per (user, item); `is_read` when a read reached `read_at` of the issue."""
    if events.empty:
        return schemas.empty(schemas.INTERACTIONS)
    frame = events.assign(
        weight=event_weights(events, as_of, half_life_days),
        read_fraction=events["read_fraction"].fillna(0.0),
        dismissed=events["event_type"] == "dismiss",
    )
    pairs = frame.groupby(["user_id", "item_id"], sort=True).agg(
        weight=("weight", "sum"),
        events=("event_id", "size"),
        last_ts=("ts", "max"),
        read_fraction=("read_fraction", "max"),
        dismissed=("dismissed", "max"),
    )
    pairs["is_read"] = pairs["read_fraction"] >= read_at
    return schemas.conform(pairs.reset_index(), schemas.INTERACTIONS)


def continue_reading(
    events: pd.DataFrame, as_of: datetime, low: float, high: float, max_age_days: int
) -> pd.DataFrame:
    """Issues whose latest read is between `low` and `high` of the way through and recent enough."""
    reads = events[events["event_type"] == "read"].sort_values("ts")
    latest = reads.groupby(["user_id", "item_id"], sort=True).agg(
        read_fraction=("read_fraction", "max"), updated_at=("ts", "max")
    )
    fresh = latest["updated_at"] >= pd.Timestamp(as_of) - timedelta(days=max_age_days)
    started = latest["read_fraction"].between(low, high, inclusive="left")
    return schemas.conform(latest[fresh & started].reset_index(), schemas.CONTINUE_READING)


def build_interactions(
    interval_end: datetime, settings: Settings | None = None
) -> InteractionStats:
    """Write the batch's interaction and continue-reading tables from the clean events."""
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    start = interval_end - timedelta(days=settings.history_days)
    events, duplicates = load_events(lake, start, interval_end, columns=MODEL_EVENT_COLUMNS)
    pairs, started = Recipe.from_settings(settings).tables(events, interval_end)
    lake.write_batch(pairs, tables.INTERACTIONS, batch)
    lake.write_batch(started, tables.CONTINUE_READING, batch)
    stats = InteractionStats(
        batch=batch,
        events=len(events),
        duplicates=duplicates,
        users=int(pairs["user_id"].nunique()),
        items=int(pairs["item_id"].nunique()),
        pairs=len(pairs),
        continue_reading=len(started),
    )
    log.info("interactions for %s: %s", batch, stats)
    return stats
