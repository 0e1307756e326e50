"""Ingest and validate on the simulated world: the real SQLite app database, the real GE suites.

Every extracted row ends up in the lake or in quarantine with its reason, a batch with too many bad
rows fails after writing both, and watermarks make each batch read each row exactly once.
Bad rows are written the way the app (or a careless exporter) would: raw SQL into its tables.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from inbo import schemas
from inbo.errors import ValidationFailed
from inbo.lake import Lake, batch_key
from inbo.settings import Settings
from pipelines.app.sources import INCREMENTAL_TABLES, SNAPSHOT_TABLES, FileDropSource, Source
from pipelines.ingest import IngestReport, ingest, parse_ts
from pipelines.validate import ValidationReport, validate_batch

B1 = datetime(2026, 11, 20, tzinfo=UTC)
"""End of the first batch: the end of the simulated world (conftest's `world_end`)."""
B2 = B1 + timedelta(days=1)
KEY1, KEY2 = batch_key(B1), batch_key(B2)
LAST_ID = 13_044
"""The simulated world's interactions are ids 1..LAST_ID, all recorded before B1."""
PROGRESS_ROWS = 305
WORLD_EVENTS = LAST_ID + PROGRESS_ROWS
"""Interactions and reading-progress rows of the simulated world before B1."""


def ei(offset: int) -> str:
    """Event id of the interaction inserted `offset` rows after the world's last one."""
    return f"ei-{LAST_ID + offset}"


def at(moment: str) -> str:
    """A naive UTC time as the app stores it in SQLite (SQLAlchemy's DateTime text)."""
    return datetime.fromisoformat(moment).strftime("%Y-%m-%d %H:%M:%S.%f")


def insert(settings: Settings, table: str, *rows: dict[str, Any]) -> None:
    """Raw INSERTs into the app database: SQLite keeps 'abc' in an INTEGER column as text."""
    columns = list(rows[0])
    sql = text(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    )
    engine = create_engine(settings.app_db)
    with engine.begin() as conn:
        conn.execute(sql, list(rows))
    engine.dispose()


def interaction(**overrides: Any) -> dict[str, Any]:
    """A clean interaction recorded inside the first batch; known user 1 and issue 1."""
    row = {
        "user_id": 1,
        "issue_id": 1,
        "kind": "click",
        "occurred_at": at("2026-11-19 12:00:00"),
        "recorded_at": at("2026-11-19 12:00:02"),
        "session_id": "added",
        "dwell_ms": 1500,
        "position": 0,
        "surface": "feed",
        "device": "ios",
        "country": "BE",
        "rec_context": None,
    }
    return row | overrides


def progress(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A clean reading-progress state of user 1 on an issue they had not opened yet."""
    engine = create_engine(settings.app_db)
    with engine.connect() as conn:
        issue = conn.execute(
            text(
                "SELECT MIN(id) FROM newsletter_issues WHERE id NOT IN "
                "(SELECT issue_id FROM reading_progress WHERE user_id = 1)"
            )
        ).scalar_one()
    engine.dispose()
    row = {
        "user_id": 1,
        "issue_id": issue,
        "progress": 0.5,
        "seconds_read": 40.0,
        "started_at": at("2026-11-19 12:00:00"),
        "updated_at": at("2026-11-19 12:01:00"),
        "session_id": "added",
        "device": "web",
    }
    return row | overrides


def run_batch(
    settings: Settings, end: datetime, source: Source | None = None
) -> tuple[IngestReport, ValidationReport]:
    return ingest(end, settings, source), validate_batch(end, settings)


def lake_events(lake: Lake, batch: str | None = None) -> pd.DataFrame:
    """The lake's user events (of one batch, or all), sorted by event id."""
    pattern = f"date=*/{batch}.parquet" if batch else "date=*/*.parquet"
    events = lake.read_files(lake.files("user_events", pattern), schemas.USER_EVENTS)
    return events.sort_values("event_id", ignore_index=True)


def lake_table(lake: Lake, table: str, key: str = KEY1) -> pd.DataFrame:
    frame = lake.read(table, {"batch": key}, "part")
    return frame.sort_values(frame.columns[0], ignore_index=True)


def quarantined(lake: Lake, table: str, stage: str, key: str = KEY1) -> pd.DataFrame:
    if not lake.exists(f"quarantine/{table}", {"batch": key}, stage):
        return pd.DataFrame()
    return lake.read(f"quarantine/{table}", {"batch": key}, stage)


def quarantine_files(lake: Lake) -> list[str]:
    root = lake.path("quarantine") + "/"
    return [path.removeprefix(root) for path in lake.files("quarantine")]


def assert_every_row_accounted_for(
    lake: Lake, report: IngestReport, checked: ValidationReport, key: str = KEY1
) -> None:
    """extracted = converted + quarantined per table; staged events = lake + validate quarantine."""
    for table, converted in report.converted.items():
        bad = len(quarantined(lake, table, "ingest", key))
        assert report.quarantined.get(table, 0) == bad, table
        assert report.extracted[table] == converted + bad, table
    staged = lake.read("staging/user_events", {"batch": key}, "part")
    sources = [t.name for t in INCREMENTAL_TABLES]
    assert len(staged) == sum(report.converted[t] for t in sources)
    rejected = len(quarantined(lake, "user_events", "validate", key))
    assert checked.quarantined["user_events"] == rejected
    assert len(lake_events(lake, key)) == len(staged) - rejected == checked.passed["user_events"]


# --- first batches of the world, clean and dirty, each run once for the module ---


@dataclass(frozen=True)
class Run:
    settings: Settings
    report: IngestReport
    checked: ValidationReport

    @property
    def lake(self) -> Lake:
        return Lake(self.settings.lake)


def run_world(
    world_template: Path, folder: Path, prepare: Callable[[Settings, Path], Source | None]
) -> Run:
    """Batch 1 of a fresh copy of the world, after `prepare` changed it (and maybe chose a source)."""
    settings = Settings(var_dir=folder / "var")
    shutil.copytree(world_template, settings.var_dir)
    source = prepare(settings, folder / "drop")
    report, checked = run_batch(settings, B1, source)
    return Run(settings, report, checked)


@pytest.fixture(scope="module")
def clean(world_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The untouched world: what the clean rows of every dirty batch must still look like."""
    return run_world(world_template, tmp_path_factory.mktemp("clean"), lambda *_: None)


def test_clean_world_counts_add_up(clean: Run, world_end: datetime) -> None:
    assert world_end == B1
    report, checked = clean.report, clean.checked
    engine = create_engine(clean.settings.app_db)
    with engine.connect() as conn:
        in_app = [
            conn.execute(text(f"SELECT COUNT(*), MAX({column}) FROM {table}")).one()
            for table, column in (("experience_interactions", "id"), ("reading_progress", "1"))
        ]
    engine.dispose()
    assert in_app == [(LAST_ID, LAST_ID), (PROGRESS_ROWS, 1)]
    assert report.extracted["experience_interactions"] == LAST_ID
    assert report.extracted["reading_progress"] == PROGRESS_ROWS
    assert report.quarantined == {}
    assert report.conversion_rate == 1.0
    assert_every_row_accounted_for(clean.lake, report, checked)
    assert len(lake_events(clean.lake)) == WORLD_EVENTS
    assert quarantine_files(clean.lake) == []
    assert checked.bad_share == {"users": 0.0, "items": 0.0, "user_events": 0.0}


# --- one bad row of each kind, in a batch of clean ones ---


Row = Callable[[Settings, str], tuple[str, dict[str, Any]]]
"""(app table, raw row), given the settings and the row's session_id."""


@dataclass(frozen=True)
class Bad:
    row: Row | None
    """How to make the row in the app database; None: it only comes in a file drop."""
    table: str
    """Quarantine folder: the app table at ingest, the canonical table at validation."""
    stage: str
    check: str
    reason: str
    marker: tuple[str, str] | None = None
    """Column and value that single out the row in quarantine; default: its session_id."""


def bad_interaction(**overrides: Any) -> Row:
    return lambda _, mark: ("experience_interactions", interaction(session_id=mark) | overrides)


def bad_progress(**overrides: Any) -> Row:
    return lambda settings, mark: (
        "reading_progress",
        progress(settings, session_id=mark) | overrides,
    )


def long_title_issue(_settings: Settings, _mark: str) -> tuple[str, dict[str, Any]]:
    return "newsletter_issues", {
        "id": 121,
        "publisher_id": 1,
        "title": "x" * 301,
        "body_preview": "a preview",
        "category": "gaming",
        "tags": "games",
        "language": "en",
        "published_at": at("2026-11-19 08:00:00"),
        "created_at": at("2026-11-19 07:00:00"),
    }


LONG_SESSION = "bad: session_id of 1,000,000 characters ".ljust(1_000_000, "x")
LONG_REC_CONTEXT = json.dumps({"table_version": "v" * 1_000_000, "source": "als"})

IN_APP_DB = {
    "unknown user id": Bad(
        bad_interaction(user_id=99_999),
        "user_events",
        "validate",
        "expect_column_values_to_be_in_set(user_id_is_known)",
        "unknown user 99999",
    ),
    "unknown item id": Bad(
        bad_interaction(issue_id=99_999),
        "user_events",
        "validate",
        "expect_column_values_to_be_in_set(item_id_is_known)",
        "unknown item 99999",
    ),
    "dwell_ms is text": Bad(
        bad_interaction(dwell_ms="abc"),
        "experience_interactions",
        "ingest",
        "expect_column_values_to_match_regex(dwell_ms)",
        "dwell_ms 'abc' is not a non-negative number",
    ),
    "user_id is text": Bad(
        bad_interaction(user_id="x"),
        "experience_interactions",
        "ingest",
        "expect_column_values_to_match_regex(user_id)",
        "user_id 'x' is not an integer",
    ),
    "progress is text": Bad(
        bad_progress(progress="abc"),
        "reading_progress",
        "ingest",
        "conversion",
        "conversion: progress 'abc' is not a valid value",
    ),
    "occurred after the batch end": Bad(
        bad_interaction(occurred_at=at("2026-11-20 06:00:00")),
        "user_events",
        "validate",
        "expect_column_values_to_be_between(ts)",
        "ts 2026-11-20 06:00:00+00:00 is in the future",
    ),
    "occurred before 2000": Bad(
        bad_interaction(occurred_at=at("1999-12-31 23:00:00")),
        "user_events",
        "validate",
        "expect_column_values_to_be_between(ts)",
        "ts 1999-12-31 23:00:00+00:00 is before 2000-01-01",
    ),
    "negative dwell_ms": Bad(
        bad_interaction(dwell_ms=-1.5),
        "experience_interactions",
        "ingest",
        "expect_column_values_to_match_regex(dwell_ms)",
        "dwell_ms '-1.5' is not a non-negative number",
    ),
    "negative seconds_read": Bad(
        bad_progress(seconds_read=-40.0),
        "user_events",
        "validate",
        "expect_column_values_to_be_between(dwell_seconds)",
        "dwell_seconds -40.0 is negative",
    ),
    "read progress 1.5": Bad(
        bad_progress(progress=1.5),
        "user_events",
        "validate",
        "expect_column_values_to_be_between(read_fraction)",
        "read_fraction 1.5 is not between 0 and 1",
    ),
    "unknown kind": Bad(
        bad_interaction(kind="like"),
        "experience_interactions",
        "ingest",
        "expect_column_values_to_be_in_set(kind)",
        "unknown kind 'like'",
    ),
    "rec_context is not JSON": Bad(
        bad_interaction(rec_context="{table_version: 1"),
        "experience_interactions",
        "ingest",
        "conversion",
        "rec_context is not valid JSON",
    ),
    "rec_context table_version is a number": Bad(
        bad_interaction(rec_context='{"table_version": 7, "source": "als", "variant": "control"}'),
        "experience_interactions",
        "ingest",
        "conversion",
        "rec_context table_version 7 is not text",
    ),
    "rec_context table_version is an object": Bad(
        bad_interaction(rec_context='{"table_version": {"id": 7}, "source": "als"}'),
        "experience_interactions",
        "ingest",
        "conversion",
        'rec_context table_version {"id": 7} is not text',
    ),
    "position beyond a 32-bit integer": Bad(
        bad_interaction(position=3_000_000_000),
        "experience_interactions",
        "ingest",
        "conversion",
        "conversion: position '3000000000.0' is not a valid value",  # read as float: nulls
    ),
    "session_id of 1,000,000 characters": Bad(
        bad_interaction(session_id=LONG_SESSION),
        "user_events",
        "validate",
        "expect_column_value_lengths_to_be_between(session_id)",
        "session_id has 1000000 characters, outside 1..128",
        marker=("session_id", LONG_SESSION),
    ),
    "rec_context value of 1,000,000 characters": Bad(
        bad_interaction(rec_context=LONG_REC_CONTEXT),
        "experience_interactions",
        "ingest",
        "expect_column_value_lengths_to_be_between(rec_context)",
        f"rec_context has {len(LONG_REC_CONTEXT)} characters, outside 0..1000",
    ),
    "dwell of 1e30 ms": Bad(
        bad_interaction(dwell_ms=1e30),
        "user_events",
        "validate",
        "expect_column_values_to_be_between(dwell_seconds)",
        f"dwell_seconds {1e30 / 1000.0} is above 86400 (one day)",
    ),
    "seconds_read of 1e30": Bad(
        bad_progress(seconds_read=1e30),
        "user_events",
        "validate",
        "expect_column_values_to_be_between(dwell_seconds)",
        "dwell_seconds 1e+30 is above 86400 (one day)",
    ),
    "issue title over 300 characters": Bad(
        long_title_issue,
        "items",
        "validate",
        "expect_column_value_lengths_to_be_between(title)",
        "title has 301 characters, outside 1..300",
        marker=("item_id", "121"),
    ),
}
"""Bad rows the app database can hold: SQLite keeps text in an INTEGER column."""

IN_FILE_DROP = {
    "null user_id": Bad(
        None,
        "experience_interactions",
        "ingest",
        "expect_column_values_to_not_be_null(user_id)",
        "user_id is null",
    ),
    "duplicate event_id": Bad(
        None,
        "user_events",
        "validate",
        "expect_column_values_to_be_unique(event_id)",
        "duplicate event_id",
        marker=("event_id", ei(0)),
    ),
}
"""Bad rows only an export can carry: the app's schema refuses a null user_id, and its primary key
a second row with the same id; an exporter that retries re-sends rows it already delivered."""


def insert_bad_rows(settings: Settings, _drop: Path) -> None:
    for name, case in IN_APP_DB.items():
        assert case.row is not None
        table, row = case.row(settings, f"bad: {name}")
        insert(settings, table, row)


def export_world(settings: Settings, root: Path) -> None:
    """The app database as one CSV export per table, named by time as exporters do."""
    engine = create_engine(settings.app_db)
    with engine.connect() as conn:
        for table in [*(t.name for t in INCREMENTAL_TABLES), *SNAPSHOT_TABLES]:
            (root / table).mkdir(parents=True)
            frame = pd.read_sql(text(f"SELECT * FROM {table}"), conn)
            frame.to_csv(root / table / "2026-11-19T2358.csv", index=False)
    engine.dispose()


def drop_bad_files(settings: Settings, drop: Path) -> Source:
    """The world exported, then a second interactions export: a null user and a re-sent row."""
    export_world(settings, drop)
    folder = drop / "experience_interactions"
    first = pd.read_csv(folder / "2026-11-19T2358.csv", dtype=str)
    null_user = interaction(id=LAST_ID + 1, user_id=None, session_id="bad: null user_id")
    resent = first[first["id"] == str(LAST_ID)].to_dict("records")
    pd.DataFrame([null_user, *resent]).to_csv(folder / "2026-11-19T2359.csv", index=False)
    return FileDropSource(drop)


@pytest.fixture(scope="module")
def from_app_db(world_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_world(world_template, tmp_path_factory.mktemp("app-db"), insert_bad_rows)


@pytest.fixture(scope="module")
def from_file_drop(world_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_world(world_template, tmp_path_factory.mktemp("file-drop"), drop_bad_files)


BAD_RUNS = {"from_app_db": IN_APP_DB, "from_file_drop": IN_FILE_DROP}


def quarantine_rows(lake: Lake) -> pd.DataFrame:
    """Every quarantined row of batch 1, with the file it is in."""
    root = lake.path("quarantine") + "/"
    frames = [
        lake.read_files([path]).assign(_file=path.removeprefix(root))
        for path in lake.files("quarantine")
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@pytest.mark.parametrize(
    ("run", "name"), [(run, name) for run, cases in BAD_RUNS.items() for name in cases]
)
def test_bad_row_lands_in_quarantine_with_its_reason(
    run: str, name: str, request: pytest.FixtureRequest
) -> None:
    case = BAD_RUNS[run][name]
    rows = quarantine_rows(request.getfixturevalue(run).lake)
    column, value = case.marker or ("session_id", f"bad: {name}")
    found = rows[rows[column] == value]
    assert found[["_file", "_table", "_check", "_reason", "_batch"]].values.tolist() == [
        [
            f"{case.table}/batch={KEY1}/{case.stage}.parquet",
            case.table,
            case.check,
            case.reason,
            KEY1,
        ]
    ]


@pytest.mark.parametrize("run", BAD_RUNS)
def test_bad_rows_leave_the_clean_rows_untouched(
    run: str, request: pytest.FixtureRequest, clean: Run
) -> None:
    """Only the bad rows are quarantined, the batch passes, and the lake is the clean world's."""
    dirty: Run = request.getfixturevalue(run)
    assert len(quarantine_rows(dirty.lake)) == len(BAD_RUNS[run])
    assert_every_row_accounted_for(dirty.lake, dirty.report, dirty.checked)
    assert dirty.report.conversion_rate < 1.0
    pd.testing.assert_frame_equal(lake_events(dirty.lake), lake_events(clean.lake))
    for table in ("items", "users"):
        pd.testing.assert_frame_equal(lake_table(dirty.lake, table), lake_table(clean.lake, table))


def test_app_database_refuses_a_null_user_id(world: Settings) -> None:
    """Why the null case comes through a file drop: the app's schema cannot hold one."""
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError, match="NOT NULL"):
        insert(world, "experience_interactions", interaction(user_id=None))


# --- the quarantine threshold ---


@pytest.mark.parametrize(("bad_rows", "fails"), [(134, False), (135, True)])
def test_threshold_fails_the_batch_after_writing_everything(
    world: Settings, caplog: pytest.LogCaptureFixture, bad_rows: int, fails: bool
) -> None:
    """1% of 13,349 + n events: 134 bad rows are 0.994% and pass, 135 are 1.001% and fail."""
    at_validation = bad_rows // 2
    at_ingest = bad_rows - at_validation
    insert(
        world,
        "experience_interactions",
        *[interaction(user_id=99_999) for _ in range(at_validation)],
        *[interaction(dwell_ms="abc") for _ in range(at_ingest)],
    )
    report = ingest(B1, world)
    lake = Lake(world.lake)
    total = WORLD_EVENTS + bad_rows

    with caplog.at_level(logging.WARNING, logger="validation"):
        if fails:
            with pytest.raises(ValidationFailed) as failed:
                validate_batch(B1, world)
            message = str(failed.value)
            assert message.startswith(f"user_events: {bad_rows} of {total:,} rows (1.001%) failed")
            assert "above the 1.00% threshold" in message
            assert lake.path("quarantine") in message
        else:
            validate_batch(B1, world)
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert [r.getMessage() for r in warnings] == [
                f"user_events: {bad_rows} of {total:,} rows (0.99%) failed validation, "
                f"within the 1.00% threshold; see {lake.path('quarantine')}"
            ]

    # Nothing lost either way: the bad rows are in quarantine, the good ones in the lake when the
    # batch passed, held out of it (write-audit-publish) when it failed.
    assert len(quarantined(lake, "experience_interactions", "ingest")) == at_ingest
    assert len(quarantined(lake, "user_events", "validate")) == at_validation
    assert report.extracted["experience_interactions"] + report.extracted["reading_progress"] == (
        total
    )
    held = lake.path("held/user_events", {"batch": KEY1}, "part")
    if fails:
        assert len(lake_events(lake)) == 0
        assert len(lake.read_files([held])) == WORLD_EVENTS
    else:
        assert len(lake_events(lake)) == WORLD_EVENTS
        assert not lake.fs.exists(held)


# --- values that once crashed conversion, and re-runs of the landed raw batch ---

NANOSECONDS = "2026-11-19 13:00:00.123456789"
"""A timestamp with nine fractional digits, as a Go or Java exporter writes it."""


def test_nanosecond_timestamp_converts_truncated_to_microseconds(world: Settings) -> None:
    """The lake keeps microseconds (`schemas.TS`), like the app's own DateTime column: the digits
    below are dropped (towards the past, so an event never moves past its batch end)."""
    insert(
        world,
        "experience_interactions",
        interaction(occurred_at=NANOSECONDS, session_id="nanoseconds"),
    )
    report, checked = run_batch(world, B1)

    events = lake_events(Lake(world.lake))
    found = events[events["session_id"] == "nanoseconds"]
    assert found["ts"].tolist() == [pd.Timestamp("2026-11-19 13:00:00.123456", tz="UTC")]
    assert report.quarantined == {}
    assert checked.passed["user_events"] == WORLD_EVENTS + 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-19 13:00:00.123456789", "2026-11-19 13:00:00.123456"),
        ("2026-11-19T13:00:00.999999999+01:00", "2026-11-19 12:00:00.999999"),
        ("2026-11-19T13:00:00.1234567Z", "2026-11-19 13:00:00.123456"),
        ("2026-11-19 13:00:00.123456", "2026-11-19 13:00:00.123456"),
    ],
)
def test_parse_ts_truncates_below_microseconds(text: str, expected: str) -> None:
    stamps, failed = parse_ts(pd.Series([text, "2026-11-19 13:00:00"], dtype="string"))

    assert not failed.any()
    assert stamps.iloc[0] == pd.Timestamp(expected, tz="UTC")
    users = pd.DataFrame(
        {"user_id": [1, 2], "created_at": stamps, "country": None, "language": None}
    )
    conformed = schemas.conform(users, schemas.USERS)  # fits the lake's microseconds
    assert conformed["created_at"].iloc[0] == pd.Timestamp(expected, tz="UTC")


def test_a_value_its_canonical_column_cannot_hold_is_quarantined_not_raised() -> None:
    """The net under the parsers: a value of a kind no parser foresaw quarantines its raw row,
    naming the column and the value, and the other rows convert."""
    from pipelines.ingest import fit_schema

    raw = pd.DataFrame({"id": ["1", "2", "3", "4"]}, index=[10, 11, 12, 13], dtype="string")
    stamps = pd.to_datetime(
        ["2026-11-19 13:00:00"] * 3 + ["2026-11-19 13:00:00.123456789"], utc=True, format="ISO8601"
    )
    canonical = pd.DataFrame(
        {
            "user_id": pd.array([1, 2, 3, 4], dtype="Int64"),
            "created_at": stamps,
            "country": ["BE", 7, {"x": 1}, "FR"],
            "language": None,
        },
        index=raw.index,
    )

    fitted = fit_schema(canonical, raw, schemas.USERS, "users")

    assert fitted.good["user_id"].tolist() == [1]
    assert fitted.bad[["id", "_table", "_check", "_reason"]].values.tolist() == [
        ["2", "users", "conversion", "conversion: country 7 does not fit string"],
        ["3", "users", "conversion", "conversion: country {'x': 1} does not fit string"],
        [
            "4",
            "users",
            "conversion",
            "conversion: created_at Timestamp('2026-11-19 13:00:00.123456789+0000', tz='UTC') "
            "does not fit timestamp[us, tz=UTC]",
        ],
    ]


def test_rerun_of_a_landed_batch_holding_every_bad_value_succeeds(world: Settings) -> None:
    """A re-run converts the raw rows the first run landed: a value that crashed conversion would
    crash every re-run of its batch. Every bad value above, and a nanosecond timestamp, in one
    batch: both runs succeed with the same split."""
    insert_bad_rows(world, Path())
    insert(
        world,
        "experience_interactions",
        interaction(occurred_at=NANOSECONDS, session_id="nanoseconds"),
    )
    lake = Lake(world.lake)

    first = run_batch(world, B1)
    events, rows = lake_events(lake), quarantine_rows(lake)
    second = run_batch(world, B1)

    assert second == first
    assert first[1].status == "passed"
    assert_every_row_accounted_for(lake, *second)
    pd.testing.assert_frame_equal(lake_events(lake), events)
    pd.testing.assert_frame_equal(quarantine_rows(lake), rows)
    assert len(rows) == len(IN_APP_DB)
    assert len(events) == WORLD_EVENTS + 1
    assert (events["session_id"] == "nanoseconds").sum() == 1
