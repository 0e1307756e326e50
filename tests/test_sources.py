"""Source adapters: exports dropped as CSV, JSONL or Parquet, and the app database's errors.

A file drop is read by file name: an increment is the files after the last one read up to the
newest; a dimension table is every row created before the interval end. Whatever the format, the
same export gives the same canonical events. A broken source is one clear line, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from inbo import schemas
from inbo.errors import ServiceUnavailable, SourceError
from inbo.lake import Lake, batch_key
from inbo.settings import Settings
from pipelines.app.sources import INCREMENTAL_TABLES, AppDbSource, FileDropSource
from pipelines.ingest import ingest
from pipelines.validate import validate_batch

END = datetime(2026, 11, 20, tzinfo=UTC)
INTERACTIONS, PROGRESS = INCREMENTAL_TABLES


def interaction(id: int, **overrides: Any) -> dict[str, Any]:
    row = {
        "id": id,
        "user_id": 1,
        "issue_id": 10,
        "kind": "click",
        "occurred_at": "2026-11-19 08:00:00",
        "recorded_at": "2026-11-19 08:00:01",
        "session_id": "s1",
        "dwell_ms": None,
        "position": 0,
        "surface": "feed",
        "device": "ios",
        "country": "BE",
        "rec_context": None,
    }
    return row | overrides


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    pd.DataFrame(rows).to_csv(path, index=False)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    """Typed as an exporter writes Parquet: real timestamps, numbers as numbers."""
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        if column.endswith("_at"):
            frame[column] = pd.to_datetime(frame[column])
    frame.to_parquet(path, index=False)


WRITERS: dict[str, Callable[[Path, list[dict[str, Any]]], None]] = {
    "csv": write_csv,
    "jsonl": write_jsonl,
    "parquet": write_parquet,
}


def drop(root: Path, table: str, name: str, rows: list[dict[str, Any]]) -> str:
    """Write `rows` as the export `<root>/<table>/<name>`; the format follows the suffix."""
    folder = root / table
    folder.mkdir(parents=True, exist_ok=True)
    WRITERS[name.rsplit(".", 1)[1]](folder / name, rows)
    return name


# --- increments by file name, snapshots by creation time ---


@pytest.mark.parametrize("fmt", WRITERS)
def test_increment_reads_the_files_after_low_up_to_high(tmp_path: Path, fmt: str) -> None:
    names = [
        drop(tmp_path, INTERACTIONS.name, f"2026-11-19T0{hour}00.{fmt}", [interaction(hour)])
        for hour in (1, 2, 3)
    ]
    (tmp_path / INTERACTIONS.name / f"2026-11-19T0400.{fmt}.part").write_text("half written")
    (tmp_path / INTERACTIONS.name / "README.md").write_text("exports land here")
    source = FileDropSource(tmp_path)

    assert source.high_watermark(INTERACTIONS, END) == names[2]
    assert source.read_increment(INTERACTIONS, None, names[1])["id"].tolist() == ["1", "2"]
    assert source.read_increment(INTERACTIONS, names[0], names[2])["id"].tolist() == ["2", "3"]
    assert source.read_increment(INTERACTIONS, names[2], names[2]).empty


def test_nothing_dropped_yet_reads_as_nothing(tmp_path: Path) -> None:
    source = FileDropSource(tmp_path)
    assert source.high_watermark(PROGRESS, END) is None
    assert source.read_snapshot("users", END).empty


def user(id: int, created_at: str | None, country: str | None = "BE") -> dict[str, Any]:
    return {
        "id": id,
        "created_at": created_at,
        "updated_at": created_at,
        "country": country,
        "language": "en",
    }


def test_snapshot_keeps_rows_created_before_the_interval_end(tmp_path: Path) -> None:
    """Strictly before; a row whose creation time is unreadable is kept for validation to judge."""
    drop(
        tmp_path,
        "users",
        "2026-11-20T0100.csv",
        [
            user(1, "2026-11-01 10:00:00"),
            user(2, "2026-11-19 23:59:59.999999"),
            user(3, "2026-11-20 00:00:00"),
            user(4, "2026-11-21 09:00:00"),
            user(5, "yesterday"),
            user(6, None),
        ],
    )
    snapshot = FileDropSource(tmp_path).read_snapshot("users", END)
    assert snapshot["id"].tolist() == ["1", "2", "5", "6"]


def test_csv_keeps_text_that_pandas_would_read_as_missing(tmp_path: Path) -> None:
    """Namibia is 'NA'; only an empty field is a null."""
    drop(
        tmp_path,
        "users",
        "2026-11-20T0100.csv",
        [user(1, "2026-11-01 10:00:00", "NA"), user(2, "2026-11-01 10:00:00", None)],
    )
    snapshot = FileDropSource(tmp_path).read_snapshot("users", END)
    assert snapshot["country"].tolist() == ["NA", pd.NA]


def test_zone_aware_parquet_timestamps_are_read_as_utc(tmp_path: Path) -> None:
    """10:00 in Brussels is 09:00 UTC: the offset must not be dropped on the way to text."""
    frame = pd.DataFrame([interaction(1)])
    brussels = pd.Timestamp("2026-11-19 10:00:00", tz="Europe/Brussels")
    frame["occurred_at"] = pd.Series([brussels])
    folder = tmp_path / INTERACTIONS.name
    folder.mkdir()
    frame.to_parquet(folder / "2026-11-19T1100.parquet", index=False)

    raw = FileDropSource(tmp_path).read_increment(INTERACTIONS, None, "2026-11-19T1100.parquet")
    assert raw["occurred_at"].tolist() == ["2026-11-19T09:00:00.000000"]


@pytest.mark.parametrize(
    ("name", "content"),
    [("2026-11-19T0100.parquet", b"not parquet"), ("2026-11-19T0100.jsonl", b'{"id": 1\n')],
)
def test_unreadable_export_is_a_source_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes
) -> None:
    folder = tmp_path / INTERACTIONS.name
    folder.mkdir()
    (folder / name).write_bytes(content)
    with pytest.raises(SourceError, match="cannot read dropped file") as error:
        FileDropSource(tmp_path).read_increment(INTERACTIONS, None, name)
    assert str(folder / name) in str(error.value)


# --- the app database: one clear line when it is not there ---


def assert_one_clear_line(message: str) -> None:
    assert "\n" not in message
    for noise in ("Traceback", "sqlalchemy", "Background on this error", "[SQL:", "u:p@"):
        assert noise not in message


def test_app_database_without_the_tables_hints_at_simulate(tmp_path: Path) -> None:
    empty = tmp_path / "app.db"
    empty.touch()
    settings = Settings(var_dir=tmp_path / "var", app_db_url=f"sqlite:///{empty}")
    with pytest.raises(SourceError, match="run `inbo simulate`") as error:
        ingest(END, settings)
    assert "no such table: experience_interactions" in str(error.value)
    assert_one_clear_line(str(error.value))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@127.0.0.1:1/x",  # a closed port, or no Postgres driver installed
        "sqlite:////nonexistent-inbo-dir/app/inbo_app.db",
    ],
)
def test_unreachable_app_database_is_one_clear_error(tmp_path: Path, url: str) -> None:
    settings = Settings(var_dir=tmp_path / "var", app_db_url=url)
    with pytest.raises((ServiceUnavailable, SourceError)) as error:
        ingest(END, settings)
    assert "app database" in str(error.value)
    assert_one_clear_line(str(error.value))


def test_corrupt_app_database_is_one_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "app.db"
    garbage.write_bytes(b"this is not a database" * 100)
    settings = Settings(var_dir=tmp_path / "var", app_db_url=f"sqlite:///{garbage}")
    with pytest.raises(ServiceUnavailable, match="file is not a database") as error:
        ingest(END, settings)
    assert_one_clear_line(str(error.value))


def test_app_db_source_reads_rows_as_strings(tmp_path: Path) -> None:
    """Integers, reals and SQLite datetimes all come back as text; the increment is (low, high]."""
    from sqlalchemy import create_engine, text

    from pipelines.app.database import create_app_schema

    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    create_app_schema(engine)
    with engine.begin() as conn:
        for id, recorded in [(1, "2026-11-19 10:00:00.000000"), (2, "2026-11-20 00:00:00.000000")]:
            row = interaction(id, recorded_at=recorded, dwell_ms=1500)
            conn.execute(
                text(
                    f"INSERT INTO experience_interactions ({', '.join(row)}) "
                    f"VALUES ({', '.join(':' + c for c in row)})"
                ),
                row,
            )
    engine.dispose()
    source = AppDbSource(url)

    assert source.high_watermark(INTERACTIONS, END) == 1
    assert source.high_watermark(INTERACTIONS, END + timedelta(seconds=1)) == 2
    rows = source.read_increment(INTERACTIONS, None, 1)
    assert rows[["id", "user_id", "dwell_ms", "recorded_at", "rec_context"]].values.tolist() == [
        ["1", "1", "1500", "2026-11-19 10:00:00.000000", pd.NA]
    ]
    assert source.read_increment(INTERACTIONS, 1, 2)["id"].tolist() == ["2"]


# --- a dropped export, ingested and validated ---

TINY = {
    "users": [user(1, "2026-11-01 10:00:00"), user(2, "2026-11-02 10:00:00")],
    "publishers": [
        {"id": 1, "name": "Petri Brief", "category": "science", "created_at": "2025-02-27"}
    ],
    "newsletter_issues": [
        {
            "id": issue,
            "publisher_id": 1,
            "title": f"Issue {issue}",
            "body_preview": "cells, labs and more",
            "category": "science",
            "tags": "lab, cells",
            "language": "en",
            "published_at": "2026-11-18 07:00:00",
            "created_at": "2026-11-18 06:00:00",
        }
        for issue in (10, 11)
    ],
    "subscriptions": [
        {
            "id": 1,
            "user_id": 1,
            "publisher_id": 1,
            "subscribed_at": "2026-11-02 10:00:00",
            "unsubscribed_at": None,
        }
    ],
}
REC = json.dumps({"table_version": "20261119T0200Z", "source": "popularity", "variant": "ctl"})


def drop_tiny_export(root: Path, fmt: str) -> None:
    for table, rows in TINY.items():
        drop(root, table, f"2026-11-20T0000.{fmt}", rows)
    drop(
        root,
        INTERACTIONS.name,
        f"2026-11-19T1200.{fmt}",
        [
            interaction(1, kind="email_open", position=None, surface="email", rec_context=REC),
            interaction(2, occurred_at="2026-11-19 08:30:00", dwell_ms=1500, position=3),
        ],
    )
    drop(
        root,
        INTERACTIONS.name,
        f"2026-11-20T0000.{fmt}",
        [interaction(3, user_id=2, kind="bookmark", issue_id=11)],
    )
    drop(
        root,
        PROGRESS.name,
        f"2026-11-20T0000.{fmt}",
        [
            {
                "user_id": 2,
                "issue_id": 10,
                "progress": 0.5,
                "seconds_read": 42.0,
                "started_at": "2026-11-19 10:00:00",
                "updated_at": "2026-11-19 10:05:00",
                "session_id": "s2",
                "device": "web",
            }
        ],
    )


@pytest.mark.parametrize("fmt", WRITERS)
def test_ingest_a_dropped_export_end_to_end(settings: Settings, tmp_path: Path, fmt: str) -> None:
    drop_tiny_export(tmp_path / "drop", fmt)
    source = FileDropSource(tmp_path / "drop")

    report = ingest(END, settings, source)
    checked = validate_batch(END, settings)

    assert report.source == "filedrop"
    assert report.watermarks["experience_interactions"] == {
        "low": None,
        "high": f"2026-11-20T0000.{fmt}",
    }
    assert report.extracted == {
        "experience_interactions": 3,
        "reading_progress": 1,
        "users": 2,
        "publishers": 1,
        "newsletter_issues": 2,
        "subscriptions": 1,
    }
    assert report.quarantined == {}
    assert checked.passed == {"users": 2, "items": 2, "user_events": 4}
    lake = Lake(settings.lake)
    events = lake.read("user_events", schema=schemas.USER_EVENTS).sort_values("event_id")
    columns = ["event_id", "user_id", "item_id", "event_type", "ts", "dwell_seconds"]
    columns += ["read_fraction", "position", "rec_source"]
    shown = events[columns].assign(ts=events["ts"].dt.strftime("%m-%d %H:%M"))
    assert shown.astype(object).where(shown.notna(), None).values.tolist() == [
        ["ei-1", 1, 10, "open", "11-19 08:00", None, None, None, "popularity"],
        ["ei-2", 1, 10, "click", "11-19 08:30", 1.5, None, 3, None],
        ["ei-3", 2, 11, "save", "11-19 08:00", None, None, 0, None],
        ["rp-2-10-20261119T100500000000", 2, 10, "read", "11-19 10:05", 42.0, 0.5, None, None],
    ]
    items = lake.read("items", {"batch": batch_key(END)}, "part").sort_values("item_id")
    assert items["publisher"].tolist() == ["Petri Brief", "Petri Brief"]
    assert [list(tags) for tags in items["tags"]] == [["lab", "cells"], ["lab", "cells"]]

    # The next batch reads only the export dropped since.
    drop(tmp_path / "drop", INTERACTIONS.name, f"2026-11-20T1200.{fmt}", [interaction(4)])
    later = ingest(END + timedelta(days=1), settings, source)
    assert later.watermarks["experience_interactions"]["low"] == f"2026-11-20T0000.{fmt}"
    assert later.extracted["experience_interactions"] == 1
    assert later.extracted["reading_progress"] == 0
    staged = lake.read("staging/user_events", {"batch": batch_key(END + timedelta(days=1))}, "part")
    assert staged["event_id"].tolist() == ["ei-4"]


def test_dropped_user_with_unreadable_creation_time_is_quarantined_not_lost(
    settings: Settings, tmp_path: Path
) -> None:
    drop_tiny_export(tmp_path, "csv")
    drop(tmp_path, "users", "2026-11-20T0001.csv", [user(3, "last tuesday")])
    report = ingest(END, settings, FileDropSource(tmp_path))
    assert report.extracted["users"] == 3
    assert report.converted["users"] == 2
    assert report.quarantined["users"] == 1
    bad = Lake(settings.lake).read("quarantine/users", {"batch": batch_key(END)}, "ingest")
    assert bad[["id", "_reason"]].values.tolist() == [
        ["3", "conversion: created_at 'last tuesday' is not a valid value"]
    ]


def test_as_strings_keeps_list_cells_and_missing_values_apart() -> None:
    """Quarantined item rows carry their parsed tags (a list): they must not break the quarantine."""
    from pipelines.app.sources import as_strings

    frame = pd.DataFrame(
        {
            "tags": [["ai", "chips"], np.array(["space"]), [], None],
            "score": [1.5, float("nan"), 2.0, 3.0],
            "name": ["a", None, "c", "d"],
        }
    )

    text = as_strings(frame)

    assert text["tags"].tolist() == ["ai,chips", "space", "", pd.NA]
    assert text["score"].tolist() == ["1.5", pd.NA, "2.0", "3.0"]
    assert text["name"].tolist() == ["a", pd.NA, "c", "d"]
