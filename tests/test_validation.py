"""Validation suites: each kind of malformed row lands in quarantine with the right reason.

Every case is a small clean frame plus one bad row; the clean rows must all stay good and no row
may be dropped.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from inbo.errors import DataNotFound, SourceError, ValidationFailed
from inbo.lake import Lake
from inbo.schemas import ITEMS, USER_EVENTS, USERS
from inbo.settings import Settings
from validation import ValidationResult, enforce_threshold, validate

NOW = datetime(2026, 11, 26, tzinfo=UTC)
YESTERDAY = datetime(2026, 11, 25, 12, tzinfo=UTC)
KNOWN_USERS = {1, 2, 3}
KNOWN_ITEMS = {10, 11}


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows in the given column order, absent keys null, on a non-unique index like a concat's."""
    frame = pd.DataFrame(rows).reindex(columns=columns)
    frame.index = [7] * len(frame)
    return frame


def raw_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": 1,
        "user_id": 1,
        "issue_id": 10,
        "kind": "click",
        "occurred_at": "2026-11-25T12:00:00Z",
        "recorded_at": "2026-11-25T12:00:05Z",
        "session_id": "s1",
        "dwell_ms": 1500,
        "position": 0,
        "surface": "home",
        "device": "ios",
        "country": "BE",
        "rec_context": None,
    }
    return row | overrides


def raw_clean() -> list[dict[str, Any]]:
    """Loosely typed like SQLite/CSV rows: numbers as text, floats, datetime objects, nulls."""
    return [
        raw_row(id=1),
        raw_row(id="2", user_id="2", issue_id=11.0, dwell_ms="250.5", position="3"),
        raw_row(id=3, occurred_at=datetime(2026, 11, 25, 9, 30), dwell_ms=None, position=None),
        raw_row(id=4, kind="email_open", occurred_at="2026-11-25 08:00:00+01:00", dwell_ms=0.0),
    ]


def event_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "event_id": "e1",
        "user_id": 1,
        "item_id": 10,
        "event_type": "read",
        "ts": YESTERDAY,
        "dwell_seconds": 30.0,
        "read_fraction": 0.5,
        "position": 2,
    }
    return row | overrides


def events_clean() -> list[dict[str, Any]]:
    return [
        event_row(event_id="e1"),
        event_row(event_id="e2", user_id=2, item_id=11, event_type="open", read_fraction=None),
        event_row(event_id="e3", user_id=3, dwell_seconds=0.0, read_fraction=1.0, position=0),
    ]


def item_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "item_id": 10,
        "publisher_id": 1,
        "publisher": "Morning Brew",
        "title": "Markets today",
        "description": "What moved.",
        "category": "business",
        "published_at": YESTERDAY,
    }
    return row | overrides


def items_clean() -> list[dict[str, Any]]:
    return [item_row(item_id=10), item_row(item_id=11, description=None, title="x" * 300)]


def user_row(**overrides: Any) -> dict[str, Any]:
    return {"user_id": 1, "created_at": YESTERDAY, "country": "BE"} | overrides


def users_clean() -> list[dict[str, Any]]:
    return [user_row(user_id=1), user_row(user_id=2)]


CLEAN = {
    "experience_interactions": (raw_clean, list(raw_row())),
    "user_events": (events_clean, USER_EVENTS.names),
    "items": (items_clean, ITEMS.names),
    "users": (users_clean, USERS.names),
}


def run(suite: str, *bad_rows: dict[str, Any]) -> ValidationResult:
    clean, columns = CLEAN[suite]
    frame = _frame([*clean(), *bad_rows], columns)
    result = validate(frame, suite, known_user_ids=KNOWN_USERS, known_item_ids=KNOWN_ITEMS, now=NOW)
    assert result.checked == len(frame)
    assert len(result.good) + len(result.bad) == result.checked
    assert list(result.good.columns) == list(frame.columns)
    assert list(result.bad.columns) == [*frame.columns, "_check", "_reason"]
    return result


@pytest.mark.parametrize("suite", list(CLEAN))
def test_clean_rows_all_pass(suite: str) -> None:
    result = run(suite)

    assert result.bad.empty
    assert result.success
    assert result.statistics["unsuccessful_expectations"] == 0


@pytest.mark.parametrize(
    ("suite", "bad_row", "check", "reason"),
    [
        pytest.param(
            "experience_interactions",
            raw_row(id=9, user_id=None),
            "expect_column_values_to_not_be_null(user_id)",
            "user_id is null",
            id="raw-null-user",
        ),
        pytest.param(
            "experience_interactions",
            raw_row(id=9, user_id="x"),
            "expect_column_values_to_match_regex(user_id)",
            "user_id 'x' is not an integer",
            id="raw-text-user-id",
        ),
        pytest.param(
            "experience_interactions",
            raw_row(id=9, issue_id=10.5),
            "expect_column_values_to_match_regex(issue_id)",
            "issue_id 10.5 is not an integer",
            id="raw-fractional-issue-id",
        ),
        pytest.param(
            "experience_interactions",
            raw_row(id=9, dwell_ms="abc"),
            "expect_column_values_to_match_regex(dwell_ms)",
            "dwell_ms 'abc' is not a non-negative number",
            id="raw-text-dwell",
        ),
        pytest.param(
            "experience_interactions",
            raw_row(id=9, dwell_ms=-5),
            "expect_column_values_to_match_regex(dwell_ms)",
            "dwell_ms -5 is not a non-negative number",
            id="raw-negative-dwell",
        ),
        pytest.param(
            "experience_interactions",
            raw_row(id=9, position="-1"),
            "expect_column_values_to_match_regex(position)",
            "position '-1' is not a non-negative integer",
            id="raw-negative-position",
        ),
        pytest.param(
            "experience_interactions",
            raw_row(id=9, kind="poke"),
            "expect_column_values_to_be_in_set(kind)",
            "unknown kind 'poke'",
            id="raw-unknown-kind",
        ),
        pytest.param(
            "experience_interactions",
            raw_row(id=9, occurred_at="yesterday"),
            "expect_column_values_to_be_in_set(occurred_at_is_timestamp)",
            "occurred_at 'yesterday' is not a timestamp",
            id="raw-bad-timestamp",
        ),
        pytest.param(
            "user_events",
            event_row(event_id=None),
            "expect_column_values_to_not_be_null(event_id)",
            "event_id is null",
            id="null-event-id",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", item_id=None),
            "expect_column_values_to_not_be_null(item_id)",
            "item_id is null",
            id="null-item-id",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", user_id=42),
            "expect_column_values_to_be_in_set(user_id_is_known)",
            "unknown user 42",
            id="unknown-user",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", item_id=99),
            "expect_column_values_to_be_in_set(item_id_is_known)",
            "unknown item 99",
            id="unknown-item",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", event_type="poke"),
            "expect_column_values_to_be_in_set(event_type)",
            "unknown event_type 'poke'",
            id="unknown-event-type",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", ts=datetime(2026, 12, 1, tzinfo=UTC)),
            "expect_column_values_to_be_between(ts)",
            "ts 2026-12-01 00:00:00+00:00 is in the future",
            id="future-ts",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", ts=datetime(1999, 12, 31, tzinfo=UTC)),
            "expect_column_values_to_be_between(ts)",
            "ts 1999-12-31 00:00:00+00:00 is before 2000-01-01",
            id="pre-2000-ts",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", dwell_seconds=-3.0),
            "expect_column_values_to_be_between(dwell_seconds)",
            "dwell_seconds -3.0 is negative",
            id="negative-dwell",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", read_fraction=1.5),
            "expect_column_values_to_be_between(read_fraction)",
            "read_fraction 1.5 is not between 0 and 1",
            id="read-fraction-above-1",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", position=-1),
            "expect_column_values_to_be_between(position)",
            "position -1 is negative",
            id="negative-position",
        ),
        pytest.param(
            "experience_interactions",
            raw_row(id=9, rec_context='{"source": "' + "x" * 1000 + '"}'),
            "expect_column_value_lengths_to_be_between(rec_context)",
            "rec_context has 1014 characters, outside 0..1000",
            id="raw-long-rec-context",
        ),
        *(
            pytest.param(
                "user_events",
                event_row(event_id="e9", **{column: "x" * (high + 1)}),
                f"expect_column_value_lengths_to_be_between({column})",
                f"{column} has {high + 1} characters, outside {low}..{high}",
                id=f"long-{column}",
            )
            for column, low, high in [
                ("session_id", 1, 128),
                ("surface", 1, 32),
                ("device", 1, 32),
                ("rec_table_version", 1, 64),
                ("rec_source", 1, 64),
                ("rec_variant", 1, 64),
            ]
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e" * 129),
            "expect_column_value_lengths_to_be_between(event_id)",
            "event_id has 129 characters, outside 1..128",
            id="long-event-id",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", session_id=""),
            "expect_column_value_lengths_to_be_between(session_id)",
            "session_id has 0 characters, outside 1..128",
            id="empty-session-id",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", country="BEL"),
            "expect_column_value_lengths_to_be_between(country)",
            "country has 3 characters, outside 2..2",
            id="three-letter-country",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", dwell_seconds=1e27),
            "expect_column_values_to_be_between(dwell_seconds)",
            "dwell_seconds 1e+27 is above 86400 (one day)",
            id="dwell-1e27",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", dwell_seconds=float("inf")),
            "expect_column_values_to_be_between(dwell_seconds)",
            "dwell_seconds inf is above 86400 (one day)",
            id="infinite-dwell",
        ),
        pytest.param(
            "user_events",
            event_row(event_id="e9", position=10_001),
            "expect_column_values_to_be_between(position)",
            "position 10001 is above 10000",
            id="position-beyond-10000",
        ),
        pytest.param(
            "items",
            item_row(item_id=12, title="x" * 301),
            "expect_column_value_lengths_to_be_between(title)",
            "title has 301 characters, outside 1..300",
            id="long-title",
        ),
        pytest.param(
            "items",
            item_row(item_id=12, title=""),
            "expect_column_value_lengths_to_be_between(title)",
            "title has 0 characters, outside 1..300",
            id="empty-title",
        ),
        pytest.param(
            "items",
            item_row(item_id=12, description="y" * 5001),
            "expect_column_value_lengths_to_be_between(description)",
            "description has 5001 characters, outside 0..5000",
            id="long-description",
        ),
        pytest.param(
            "items",
            item_row(item_id=12, category=None),
            "expect_column_values_to_not_be_null(category)",
            "category is null",
            id="null-category",
        ),
        pytest.param(
            "items",
            item_row(item_id=12, published_at=datetime(1990, 1, 1, tzinfo=UTC)),
            "expect_column_values_to_be_between(published_at)",
            "published_at 1990-01-01 00:00:00+00:00 is before 2000-01-01",
            id="pre-2000-item",
        ),
        pytest.param(
            "users",
            user_row(user_id=None),
            "expect_column_values_to_not_be_null(user_id)",
            "user_id is null",
            id="null-user",
        ),
        pytest.param(
            "users",
            user_row(user_id=3, created_at=datetime(2027, 1, 1, tzinfo=UTC)),
            "expect_column_values_to_be_between(created_at)",
            "created_at 2027-01-01 00:00:00+00:00 is in the future",
            id="future-user",
        ),
    ],
)
def test_malformed_row_is_quarantined(
    suite: str, bad_row: dict[str, Any], check: str, reason: str
) -> None:
    result = run(suite, bad_row)

    assert len(result.good) == len(CLEAN[suite][0]())
    assert result.bad[["_check", "_reason"]].values.tolist() == [[check, reason]]
    assert not result.success


@pytest.mark.parametrize(
    ("suite", "key", "first", "copy", "marker"),
    [
        (
            "user_events",
            "event_id",
            event_row(event_id="d", dwell_seconds=1.0),
            event_row(event_id="d"),
            "dwell_seconds",
        ),
        ("items", "item_id", item_row(item_id=12, title="first"), item_row(item_id=12), "title"),
        ("users", "user_id", user_row(user_id=5, country="FR"), user_row(user_id=5), "country"),
    ],
)
def test_duplicate_keeps_first_copy(
    suite: str, key: str, first: dict[str, Any], copy: dict[str, Any], marker: str
) -> None:
    result = run(suite, first, copy, copy)

    assert len(result.good) == len(CLEAN[suite][0]()) + 1
    assert result.good.iloc[-1][marker] == first[marker]
    assert result.bad["_reason"].tolist() == [f"duplicate {key}"] * 2
    assert set(result.bad["_check"]) == {f"expect_column_values_to_be_unique({key})"}


def test_row_with_several_problems_is_reported_once_with_its_first() -> None:
    result = run("user_events", event_row(event_id="e9", user_id=None, read_fraction=7.0))

    assert result.bad["_reason"].tolist() == ["user_id is null"]


def test_bad_rows_keep_input_order_and_index() -> None:
    rows = [
        event_row(event_id="a", user_id=42),
        *events_clean(),
        event_row(event_id="b", item_id=99),
        event_row(event_id="c", user_id=None),
    ]
    frame = _frame(rows, USER_EVENTS.names)
    frame.index = [30, 20, 20, 10, 0, 30]

    result = validate(
        frame, "user_events", known_user_ids=KNOWN_USERS, known_item_ids=KNOWN_ITEMS, now=NOW
    )

    assert result.bad["event_id"].tolist() == ["a", "b", "c"]
    assert result.bad.index.tolist() == [30, 0, 30]
    assert result.good.index.tolist() == [20, 20, 10]
    assert result.bad["_reason"].tolist() == [
        "unknown user 42",
        "unknown item 99",
        "user_id is null",
    ]


@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_ids_are_positive_even_without_known_ids(column: str) -> None:
    frame = _frame([*events_clean(), event_row(event_id="e9", **{column: 0})], USER_EVENTS.names)

    result = validate(frame, "user_events", now=NOW)

    assert result.bad[["_check", "_reason"]].values.tolist() == [
        [f"expect_column_values_to_be_between({column})", f"{column} 0 is not a positive id"]
    ]


def test_every_event_field_is_bounded() -> None:
    """Each canonical event column has a bound beyond presence: a length, a range or a set."""
    from validation import suites

    suite = suites.build("user_events", NOW)
    bounded = {
        check.source
        for check in suite.checks
        if check.expectation
        in {
            "ExpectColumnValueLengthsToBeBetween",
            "ExpectColumnValuesToBeBetween",
            "ExpectColumnValuesToBeInSet",
        }
    }
    assert set(USER_EVENTS.names) <= bounded


def test_reference_checks_run_only_when_ids_are_given() -> None:
    frame = _frame([*events_clean(), event_row(event_id="e9", user_id=42)], USER_EVENTS.names)

    result = validate(frame, "user_events", now=NOW)

    assert result.bad.empty


def test_missing_column_quarantines_every_row() -> None:
    frame = _frame(raw_clean(), list(raw_row())).drop(columns="dwell_ms")

    result = validate(frame, "experience_interactions", now=NOW)

    assert result.good.empty
    assert set(result.bad["_reason"]) == {"column dwell_ms is missing"}
    assert set(result.bad["_check"]) == {"expect_column_to_exist(dwell_ms)"}


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("read_fraction", "half", "expect_column_values_to_be_between(read_fraction) could not"),
        ("ts", "garbage", "ts is not a timestamp column"),
    ],
)
def test_wrongly_typed_canonical_column_is_a_source_error(
    column: str, value: str, message: str
) -> None:
    frame = _frame(
        [*events_clean(), event_row(event_id="e9", **{column: value})], USER_EVENTS.names
    )

    with pytest.raises(SourceError, match=re.escape(f"user_events: {message}")):
        validate(frame, "user_events", now=NOW)


def test_empty_frame() -> None:
    result = run("user_events")
    empty = validate(result.good.iloc[:0], "user_events", now=NOW)

    assert (empty.checked, len(empty.good), len(empty.bad)) == (0, 0, 0)


def test_unknown_suite() -> None:
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        validate(_frame(users_clean(), USERS.names), "nope")


def test_great_expectations_stays_quiet(caplog: Any, capfd: Any) -> None:
    caplog.set_level(logging.DEBUG)

    run("users", user_row(user_id=None))

    assert not [r for r in caplog.records if r.name.startswith("great_expectations")]
    assert capfd.readouterr() == ("", "")


def test_import_is_cheap() -> None:
    code = (
        "import sys, validation, validation.docs\n"
        "heavy = {'great_expectations', 'pandas'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_threshold_exceeded_fails_with_one_line() -> None:
    with pytest.raises(ValidationFailed) as caught:
        enforce_threshold("user_events", 37, 1000, 0.01, "lake/quarantine/user_events")

    assert str(caught.value) == (
        "user_events: 37 of 1,000 rows (3.70%) failed validation, above the 1.00% threshold; "
        "see lake/quarantine/user_events"
    )


def test_threshold_not_exceeded_warns(caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="validation"):
        enforce_threshold("items", 1, 200, 0.01)

    assert [r.getMessage() for r in caplog.records] == [
        "items: 1 of 200 rows (0.50%) failed validation, within the 1.00% threshold"
    ]


def test_no_bad_rows_is_silent(caplog: Any) -> None:
    with caplog.at_level(logging.DEBUG, logger="validation"):
        enforce_threshold("items", 0, 200, 0.01)
        enforce_threshold("items", 0, 0, 0.01)

    assert caplog.records == []


# --- write-audit-publish: a batch above the threshold stays out of the tables models train on ---

HELD_BAD_ROWS = 135
"""Unknown-user interactions that put batch 1 of the world above the 1% threshold (see
test_ingest's threshold test: 135 of 13,484 rows is 1.001%)."""

PUBLISHED = ("items", "users", "subscriptions")


def hold_first_batch(world: Settings) -> tuple[Lake, str]:
    """Batch 1 of the world with too many bad rows, ingested and validated: held (and why)."""
    from test_ingest import B1, insert, interaction

    from pipelines.ingest import ingest
    from pipelines.validate import validate_batch

    insert(
        world,
        "experience_interactions",
        *[interaction(user_id=99_999) for _ in range(HELD_BAD_ROWS)],
    )
    ingest(B1, world)
    with pytest.raises(ValidationFailed, match=re.escape("above the 1.00% threshold")) as failed:
        validate_batch(B1, world)
    return Lake(world.lake), str(failed.value)


def published_events(lake: Lake) -> pd.DataFrame:
    from test_ingest import lake_events

    return lake_events(lake)


def test_a_held_batch_publishes_nothing_later_runs_read(world: Settings) -> None:
    from test_ingest import B1, KEY1, WORLD_EVENTS

    from features.interactions import load_events
    from inbo import tables
    from pipelines.hourly import batch_events
    from pipelines.validate import latest_validated_batch, read_report

    lake, message = hold_first_batch(world)

    assert len(published_events(lake)) == 0
    for name in PUBLISHED:
        assert not lake.fs.exists(lake.path(name, {"batch": KEY1})), name
    assert message.endswith(
        f"The batch's rows are held under {lake.path('held')}, out of the tables later runs "
        f"read: re-run it once fixed, or publish it as it is with `inbo validate --accept {KEY1}`"
    )
    nightly, _ = load_events(lake, B1 - timedelta(days=30), B1)
    assert nightly.empty
    assert batch_events(lake, "", KEY1).empty  # the hourly increment
    with pytest.raises(DataNotFound):
        latest_validated_batch(lake)

    report = read_report(lake, KEY1)
    assert report.status == "held"
    assert report.held["user_events"] == WORLD_EVENTS == report.passed["user_events"]
    assert set(report.held) == {"user_events", *PUBLISHED}
    held = lake.read_batch(tables.held("user_events"), KEY1)
    assert len(held) == WORLD_EVENTS
    assert len(lake.read_batch(tables.held("items"), KEY1)) == report.passed["items"]


def test_accept_publishes_a_held_batch_once_and_records_who_and_when(
    world: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from test_ingest import B1, KEY1, WORLD_EVENTS

    from inbo import tables
    from pipelines.validate import accept_batch, latest_validated_batch, read_report, validate_batch

    lake, _ = hold_first_batch(world)
    before = datetime.now(UTC)

    with caplog.at_level(logging.INFO, logger="pipelines.validate"):
        accepted = accept_batch(KEY1, "alice", world)

    assert accepted.status == "accepted"
    assert accepted.accepted_by == "alice"
    assert accepted.accepted_at is not None
    assert before <= datetime.fromisoformat(accepted.accepted_at) <= datetime.now(UTC)
    assert accepted.held == {}
    assert read_report(lake, KEY1) == accepted
    (logged,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert logged == (
        f"batch {KEY1} accepted by alice: {WORLD_EVENTS:,} user_events held above the "
        "quarantine threshold are published (bad shares users 0.00%, items 0.00%, "
        "user_events 1.00%)"
    )
    events = published_events(lake)
    assert len(events) == WORLD_EVENTS
    for name in PUBLISHED:
        assert lake.exists(name, {"batch": KEY1}, "part"), name
    assert lake.files(tables.HELD_ROOT) == []
    assert latest_validated_batch(lake) == KEY1

    # Idempotent: a second acceptance (by anyone) changes nothing, and a re-run of the accepted
    # batch (same rows, same verdict) keeps it published instead of failing it again.
    assert accept_batch(KEY1, "bob", world) == accepted
    rerun = validate_batch(B1, world)
    assert (rerun.status, rerun.accepted_by, rerun.accepted_at) == (
        "accepted",
        "alice",
        accepted.accepted_at,
    )
    pd.testing.assert_frame_equal(published_events(lake), events)


def test_a_held_batch_that_passes_on_rerun_publishes_and_a_failing_rerun_holds_again(
    world: Settings,
) -> None:
    from test_ingest import B1, KEY1, WORLD_EVENTS

    from inbo import tables
    from pipelines.validate import read_report, validate_batch

    lake, _ = hold_first_batch(world)
    assert len(published_events(lake)) == 0
    lenient = Settings(var_dir=world.var_dir, quarantine_threshold=0.02)

    assert validate_batch(B1, lenient).status == "passed"
    assert len(published_events(lake)) == WORLD_EVENTS
    assert lake.files(tables.HELD_ROOT) == []

    with pytest.raises(ValidationFailed):
        validate_batch(B1, world)
    assert read_report(lake, KEY1).status == "held"
    assert len(published_events(lake)) == 0
    for name in PUBLISHED:
        assert not lake.fs.exists(lake.path(name, {"batch": KEY1})), name


def test_accept_refuses_what_it_cannot_accept(world: Settings) -> None:
    from test_ingest import B1, KEY1

    from pipelines.ingest import ingest
    from pipelines.validate import accept_batch, validate_batch

    with pytest.raises(DataNotFound, match="was not validated"):
        accept_batch(KEY1, "alice", world)
    ingest(B1, world)
    passed = validate_batch(B1, world)
    assert accept_batch(KEY1, "alice", world) == passed  # nothing held: nothing to do


def test_cli_accept(world: Settings, live_redis: Settings) -> None:
    from test_cli import one_error_line
    from test_cli import run as inbo
    from test_ingest import KEY1

    from pipelines.validate import read_report

    lake, _ = hold_first_batch(live_redis)

    result = inbo("validate", "--accept", KEY1, "--by", "alice")
    assert result.returncode == 0, result.stderr
    assert f"batch {KEY1} accepted by alice" in result.stdout
    assert read_report(lake, KEY1).status == "accepted"
    again = inbo("validate", "--accept", KEY1)
    assert again.returncode == 0, again.stderr
    assert f"batch {KEY1} was accepted by alice" in again.stdout

    unknown = inbo("validate", "--accept", "20261121T0000Z")
    assert unknown.returncode == 1
    assert "was not validated" in one_error_line(unknown)
    malformed = inbo("validate", "--accept", "yesterday")
    assert malformed.returncode == 2
    assert "--accept: 'yesterday' is not a batch key" in malformed.stderr
    assert "Traceback" not in malformed.stderr
