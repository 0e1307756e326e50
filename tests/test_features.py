"""Interaction features: hand-checked weights, decay, dedup and continue reading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from features.interactions import (
    MODEL_EVENT_COLUMNS,
    aggregate,
    continue_reading,
    event_weights,
    load_events,
)
from inbo import schemas
from inbo.lake import Lake

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)


def events(*rows: tuple) -> pd.DataFrame:
    """Rows of (event_id, user_id, item_id, event_type, age_days, read_fraction)."""
    frame = pd.DataFrame(
        [
            {
                "event_id": event_id,
                "user_id": user,
                "item_id": item,
                "event_type": kind,
                "ts": AS_OF - timedelta(days=age),
                "read_fraction": fraction,
            }
            for event_id, user, item, kind, age, fraction in rows
        ]
    )
    for column in schemas.USER_EVENTS.names:
        if column not in frame:
            frame[column] = None
    return schemas.conform(frame, schemas.USER_EVENTS)


def test_event_weights_by_type_fraction_and_decay() -> None:
    frame = events(
        ("a", 1, 10, "click", 0, None),
        ("b", 1, 10, "click", 7, None),
        ("c", 1, 10, "read", 0, 1.0),
        ("d", 1, 10, "dismiss", 0, None),
        ("e", 1, 10, "impression", 0, None),
    )
    weights = event_weights(frame, AS_OF, half_life_days=7).tolist()
    assert weights == pytest.approx([1.0, 0.5, 3.0, -2.0, 0.0])


def test_aggregate_sums_pairs_and_flags_read_and_dismissed() -> None:
    frame = events(
        ("a", 1, 10, "click", 0, None),
        ("b", 1, 10, "read", 0, 0.95),
        ("c", 1, 11, "read", 0, 0.3),
        ("d", 2, 11, "dismiss", 0, None),
    )
    pairs = aggregate(frame, AS_OF, half_life_days=7, read_at=0.9).set_index(["user_id", "item_id"])
    assert pairs.loc[(1, 10), "weight"] == pytest.approx(1.0 + 2.0 * 1.45)
    assert pairs.loc[(1, 10), "events"] == 2
    assert bool(pairs.loc[(1, 10), "is_read"]) and not bool(pairs.loc[(1, 11), "is_read"])
    assert bool(pairs.loc[(2, 11), "dismissed"]) and not bool(pairs.loc[(1, 10), "dismissed"])


def test_continue_reading_keeps_recent_started_unfinished_issues() -> None:
    frame = events(
        ("a", 1, 10, "read", 1, 0.4),
        ("b", 1, 11, "read", 1, 0.95),
        ("c", 1, 12, "read", 20, 0.4),
        ("d", 1, 13, "read", 1, 0.01),
        ("e", 2, 10, "read", 2, 0.2),
        ("f", 2, 10, "read", 1, 0.6),
    )
    started = continue_reading(frame, AS_OF, low=0.05, high=0.9, max_age_days=14)
    assert sorted(zip(started["user_id"], started["item_id"], strict=True)) == [(1, 10), (2, 10)]
    assert started.set_index("user_id").loc[2, "read_fraction"] == pytest.approx(0.6)


def test_load_events_counts_a_redelivered_event_once(tmp_path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    frame = events(("a", 1, 10, "click", 1, None), ("b", 1, 11, "click", 1, None))
    lake.write_partitioned(
        frame, "user_events", "20261119T0000Z", by="ts", schema=schemas.USER_EVENTS
    )
    lake.write_partitioned(
        frame.head(1), "user_events", "20261120T0000Z", by="ts", schema=schemas.USER_EVENTS
    )
    loaded, duplicates = load_events(lake, AS_OF - timedelta(days=3), AS_OF)
    assert sorted(loaded["event_id"]) == ["a", "b"]
    assert duplicates == 1


def test_load_events_respects_the_window(tmp_path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    frame = events(("old", 1, 10, "click", 5, None), ("new", 1, 10, "click", 1, None))
    lake.write_partitioned(frame, "user_events", "b1", by="ts", schema=schemas.USER_EVENTS)
    loaded, _ = load_events(lake, AS_OF - timedelta(days=2), AS_OF)
    assert loaded["event_id"].tolist() == ["new"]


def test_load_events_reads_only_the_model_columns_and_still_deduplicates(tmp_path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    frame = events(("a", 1, 10, "read", 1, 0.4), ("b", 2, 11, "click", 1, None))
    frame["device"] = "ios"
    lake.write_partitioned(frame, "user_events", "b1", by="ts", schema=schemas.USER_EVENTS)
    lake.write_partitioned(frame.head(1), "user_events", "b2", by="ts", schema=schemas.USER_EVENTS)
    full, _ = load_events(lake, AS_OF - timedelta(days=3), AS_OF)
    lean, duplicates = load_events(
        lake, AS_OF - timedelta(days=3), AS_OF, columns=("user_id", "read_fraction")
    )
    assert list(lean.columns) == ["event_id", "ts", "user_id", "read_fraction"]
    assert duplicates == 1 and "device" in full
    pd.testing.assert_frame_equal(lean, full[list(lean.columns)])
    model, _ = load_events(lake, AS_OF - timedelta(days=3), AS_OF, columns=MODEL_EVENT_COLUMNS)
    assert set(model.columns) == set(MODEL_EVENT_COLUMNS)
