"""Activity features over sliding windows, refreshed by every hourly run.

Per item: impressions, clicks, reads, saves and click-through rate over the last hour, day and
week; per user: events and reads over the same windows and the time of their latest event. The
windows end at the batch's interval end, so the tables say what is hot right now, between
nightly retrains. Analysts and the dashboard read them from the lake
(`features/item_activity`, `features/user_activity`, one partition per batch).

The same step writes the reranker's item features at the batch end (`features/item_ranking`:
clicks and CTR over 1, 7 and 30 days, age, read-through), so the hourly scoring of a few active
users never has to read every user's events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from features.interactions import MODEL_EVENT_COLUMNS, load_events
from features.ranking import HISTORY_DAYS, catalogue_item_features
from inbo import tables
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings

log = logging.getLogger(__name__)

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
"""Window name -> length; every count column is `<counter>_<window>`."""

ITEM_COUNTERS: dict[str, str] = {
    "impression": "impressions",
    "click": "clicks",
    "read": "reads",
    "save": "saves",
}
"""Event type -> item counter. A read is a reading-progress state, so one user may add several."""


@dataclass(frozen=True)
class ActivityStats:
    batch: str
    events: int
    items: int
    users: int


def item_activity(events: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """One row per item with events in the longest window: counts and CTR per window.

    CTR is clicks / impressions in the window, NaN without impressions (unknown, not zero).
    """
    end = pd.Timestamp(as_of)
    counted = events[events["event_type"].isin(list(ITEM_COUNTERS))]
    columns: dict[str, pd.Series] = {}
    for window, length in WINDOWS.items():
        recent = counted[(counted["ts"] >= end - length) & (counted["ts"] < end)]
        table = pd.crosstab(recent["item_id"], recent["event_type"])
        for kind, counter in ITEM_COUNTERS.items():
            columns[f"{counter}_{window}"] = table[kind] if kind in table else pd.Series(dtype=int)
    frame = pd.DataFrame(columns).fillna(0).astype("int64")
    for window in WINDOWS:
        shown = frame[f"impressions_{window}"]
        frame[f"ctr_{window}"] = (frame[f"clicks_{window}"] / shown).where(shown > 0)
    frame.index.name = "item_id"
    return frame.sort_index().reset_index()


def user_activity(events: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """One row per user with events in the longest window: events and reads per window, last seen."""
    end = pd.Timestamp(as_of)
    longest = max(WINDOWS.values())
    past = events[(events["ts"] >= end - longest) & (events["ts"] < end)]
    columns: dict[str, pd.Series] = {}
    for window, length in WINDOWS.items():
        recent = past[past["ts"] >= end - length]
        columns[f"events_{window}"] = recent.groupby("user_id").size()
        columns[f"reads_{window}"] = (
            recent[recent["event_type"] == "read"].groupby("user_id").size()
        )
    frame = pd.DataFrame(columns).fillna(0).astype("int64")
    frame["last_event_at"] = past.groupby("user_id")["ts"].max()
    frame.index.name = "user_id"
    return frame.sort_index().reset_index()


def build_activity(interval_end: datetime, settings: Settings | None = None) -> ActivityStats:
    """Write the batch's item and user activity tables from the clean events."""
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    span = max(max(WINDOWS.values()), timedelta(days=HISTORY_DAYS))
    events, _ = load_events(lake, interval_end - span, interval_end, columns=MODEL_EVENT_COLUMNS)
    items = item_activity(events, interval_end)
    users = user_activity(events, interval_end)
    lake.write_batch(items, tables.ITEM_ACTIVITY, batch)
    lake.write_batch(users, tables.USER_ACTIVITY, batch)
    catalogue = lake.read_batch(tables.ITEMS, batch)
    ranking = catalogue_item_features(events, catalogue, interval_end)
    lake.write_batch(ranking.reset_index(), tables.ITEM_RANKING, batch)
    stats = ActivityStats(batch, len(events), len(items), len(users))
    log.info("activity for %s: %s", batch, stats)
    return stats
