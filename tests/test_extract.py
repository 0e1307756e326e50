"""Extraction: which app rows each batch reads. Watermarks make each batch read each row exactly
once, whatever order batches run in, and a re-run of a batch reproduces its tables."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text
from test_ingest import (
    B1,
    B2,
    KEY1,
    KEY2,
    LAST_ID,
    WORLD_EVENTS,
    at,
    ei,
    insert,
    interaction,
    lake_events,
    progress,
    run_batch,
)

from features.interactions import load_events
from inbo import schemas
from inbo.lake import Lake
from inbo.settings import Settings
from pipelines.ingest import IngestReport, ingest


def batch_files(lake: Lake, key: str) -> dict[str, Any]:
    """Every Parquet table the batch wrote (raw, staging, lake, quarantine), by relative path;
    not the extraction's state (`_state/`), which later batches move on."""
    root = lake.root.rstrip("/") + "/"
    every = [p for p in lake.fs.glob(f"{root}**/*.parquet") if "/_state/" not in p]
    paths = sorted(p for p in every if f"batch={key}/" in p or p.endswith(f"/{key}.parquet"))
    assert paths, f"batch {key} wrote nothing"
    return {p.removeprefix(root): pq.read_table(p) for p in paths}


def assert_same_tables(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert sorted(after) == sorted(before)
    changed = [path for path in before if not after[path].equals(before[path])]
    assert changed == []


LATE = interaction(
    user_id=4,
    issue_id=5,
    occurred_at=at("2026-11-19 22:30:00"),
    recorded_at=at("2026-11-20 06:00:00"),
    session_id="late",
)
"""Read on an offline phone in batch 1's interval, uploaded during batch 2's."""


STRAGGLER = interaction(
    user_id=6,
    issue_id=7,
    occurred_at=at("2026-11-19 23:59:58"),
    recorded_at=at("2026-11-19 23:59:59"),
    session_id="straggler",
)
"""Stamped just before batch 1 ended but committed after it ran (a slow write, a lagging replica):
only the id watermark recorded in batch 1's manifest keeps a re-run of batch 1 from taking it."""


def day_two(settings: Settings) -> None:
    """Rows of 2026-11-20 (one late), the straggler, and one recorded after batch 2 ends."""
    insert(
        settings,
        "experience_interactions",
        interaction(
            user_id=1,
            issue_id=2,
            occurred_at=at("2026-11-20 09:00:00"),
            recorded_at=at("2026-11-20 09:00:01"),
            session_id="day2",
        ),
        interaction(
            user_id=2,
            issue_id=3,
            kind="email_open",
            occurred_at=at("2026-11-20 10:00:00"),
            recorded_at=at("2026-11-20 10:00:01"),
            session_id="day2",
        ),
        LATE,
        STRAGGLER,
        interaction(
            user_id=5,
            issue_id=6,
            occurred_at=at("2026-11-21 00:30:00"),
            recorded_at=at("2026-11-21 00:30:01"),
            session_id="day3",
        ),
    )
    insert(
        settings,
        "reading_progress",
        progress(settings, updated_at=at("2026-11-20 12:00:00"), session_id="day2"),
    )


@dataclass(frozen=True)
class TwoBatches:
    lake: Lake
    first: dict[str, Any]
    rerun: dict[str, Any]
    after_second: dict[str, Any]
    second_report: IngestReport
    first_report: IngestReport


@pytest.fixture(scope="module")
def two_batches(world_template: Path, tmp_path_factory: pytest.TempPathFactory) -> TwoBatches:
    """Batch 1 with one bad row, run twice; day two's rows arrive; batch 2; batch 1 again."""
    var_dir = tmp_path_factory.mktemp("two-batches") / "var"
    shutil.copytree(world_template, var_dir)
    settings = Settings(var_dir=var_dir)
    insert(settings, "experience_interactions", interaction(kind="like"))
    lake = Lake(settings.lake)

    first_report, _ = run_batch(settings, B1)
    first = batch_files(lake, KEY1)
    run_batch(settings, B1)
    rerun = batch_files(lake, KEY1)

    day_two(settings)
    second_report, _ = run_batch(settings, B2)
    run_batch(settings, B1)
    return TwoBatches(lake, first, rerun, batch_files(lake, KEY1), second_report, first_report)


def test_rerunning_a_batch_rewrites_identical_tables(two_batches: TwoBatches) -> None:
    assert f"quarantine/experience_interactions/batch={KEY1}/ingest.parquet" in two_batches.first
    assert_same_tables(two_batches.first, two_batches.rerun)


def test_rerunning_batch_one_after_batch_two_gives_its_original_output(
    two_batches: TwoBatches,
) -> None:
    assert_same_tables(two_batches.first, two_batches.after_second)


def test_second_batch_reads_only_rows_recorded_since_the_first(two_batches: TwoBatches) -> None:
    first, second = two_batches.first_report, two_batches.second_report
    for table in ("experience_interactions", "reading_progress"):
        assert second.watermarks[table]["low"] == first.watermarks[table]["high"]
    assert second.watermarks["experience_interactions"]["high"] == LAST_ID + 5
    assert second.extracted["experience_interactions"] == 4
    assert second.extracted["reading_progress"] == 1

    events = lake_events(two_batches.lake, KEY2)
    assert events["event_id"].tolist()[:4] == [ei(2), ei(3), ei(4), ei(5)]
    assert events["session_id"].tolist() == ["day2", "day2", "late", "straggler", "day2"]
    earlier = set(lake_events(two_batches.lake, KEY1)["event_id"])
    assert earlier.isdisjoint(events["event_id"])


def test_late_rows_are_ingested_once_by_the_batch_that_received_them(
    two_batches: TwoBatches,
) -> None:
    """Both land in batch 2's file of the day they happened, and in no other file."""
    lake = two_batches.lake
    everywhere = lake.read_files(lake.files("user_events"), schemas.USER_EVENTS)
    late = everywhere[everywhere["session_id"].isin(["late", "straggler"])]
    assert late["event_id"].tolist() == [ei(4), ei(5)]
    assert late["ts"].tolist() == [
        pd.Timestamp("2026-11-19 22:30:00", tz="UTC"),
        pd.Timestamp("2026-11-19 23:59:58", tz="UTC"),
    ]
    in_its_day = lake.read_files(lake.files("user_events", f"date=2026-11-19/{KEY2}.parquet"))
    assert in_its_day["event_id"].tolist() == [ei(4), ei(5)]


def test_load_events_over_both_batches_sees_each_event_once(two_batches: TwoBatches) -> None:
    events, duplicates = load_events(two_batches.lake, B1 - timedelta(days=30), B2)
    assert duplicates == 0
    assert events["event_id"].is_unique
    assert len(events) == WORLD_EVENTS + 5
    assert events["session_id"].value_counts()[["day2", "late", "straggler"]].tolist() == [3, 1, 1]
    assert "day3" not in set(events["session_id"])


def test_rerun_after_a_progress_row_moved_on_keeps_the_original_read(world: Settings) -> None:
    lake = Lake(world.lake)
    ingest(B1, world)
    first = lake.read("staging/user_events", {"batch": KEY1}, "part")
    engine = create_engine(world.app_db)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE reading_progress SET progress = 1.0, updated_at = :now "
                "WHERE user_id = 4 AND issue_id = 41"
            ),
            {"now": at("2026-11-20 08:00:00")},
        )
    engine.dispose()
    ingest(B2, world)
    ingest(B1, world)
    pd.testing.assert_frame_equal(lake.read("staging/user_events", {"batch": KEY1}, "part"), first)
