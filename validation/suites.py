"""The four suites: which Great Expectations run on which columns, and how a failure reads.

A suite is an ordered list of `Check`s: columns present, then nulls, types and sets, uniqueness,
references, ranges. A row failing several checks is reported with the first, so the reader sees
its most basic problem. Questions a stock expectation cannot ask of a loosely typed or
foreign-keyed column ("is this a timestamp?", "is this user known?") are answered in pandas as a
derived boolean column that GE then expects to be True: a 100k-id `value_set` instead adds about
ten seconds to every run and bloats the suite and its Data Docs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from inbo import app_schema
from inbo.schemas import EVENT_TYPES, ITEMS, USER_EVENTS, USERS

OLDEST = datetime(2000, 1, 1, tzinfo=UTC)
"""Timestamps before this are clock or parsing errors, not history."""

MAX_ID = 2**63 - 1
"""Ids are positive 64-bit integers (the lake's `int64`)."""
MAX_DWELL_SECONDS = 86_400.0
"""One day. A dwell, or the seconds a reading session lasted, beyond that is a timer left running
or a unit error (the app sends milliseconds), not reading; the demo's longest is under an hour."""
MAX_POSITION = 10_000
"""Slots into a feed, an email or search results: the app shows a few hundred per session at
most, and the lake's `int32` would overflow at 2**31."""
TEXT_LENGTHS: dict[str, tuple[int, int]] = {
    "event_id": (1, 128),  # "ei-<id>" or "rp-<user>-<item>-<timestamp>": under 60
    "session_id": (1, 128),  # the app's hex ids are 16 characters, a UUID 36
    "surface": (1, 32),  # feed, email, search, reader
    "device": (1, 32),  # ios, android, web
    "country": (2, 2),  # ISO 3166-1 alpha-2, as in the users table
    "rec_table_version": (1, 64),  # <batch>-<hash>: 21 characters
    "rec_source": (1, 64),  # a candidate source's name
    "rec_variant": (1, 64),  # an A/B variant's name
}
"""Bounds on the free text of canonical events: generous next to what the app writes, tight
enough that a runaway value (a megabyte in a session id) never reaches the lake."""
MAX_REC_CONTEXT = 1_000
"""Characters of the app's raw `rec_context` JSON: its three short fields take under 100; the
fields themselves are bounded again once split (`TEXT_LENGTHS`)."""

RAW_COLUMNS: tuple[str, ...] = tuple(app_schema.experience_interactions.columns.keys())
"""The app's raw interaction columns (`inbo.app_schema`), each of which the raw suite expects."""

# GE's regex expectation matches `str(value)`: an integer read as float by pandas prints as "42.0".
INTEGER = r"^[+-]?\d+(?:\.0*)?$"
NON_NEGATIVE_INTEGER = r"^\+?\d+(?:\.0*)?$"
NON_NEGATIVE_NUMBER = r"^\+?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"

Reason = Callable[[Any], str]
Derive = Callable[[pd.DataFrame], "pd.Series[bool]"]


@dataclass(frozen=True)
class Check:
    """One GE expectation on one column, and the sentence a failing row gets from its value."""

    expectation: str
    """Class name in `great_expectations.expectations`."""
    column: str
    """Column of the checked frame the expectation runs on."""
    source: str
    """Input column the check is about; its value goes into `reason`."""
    reason: Reason
    kwargs: dict[str, Any] = field(default_factory=dict)
    derive: Derive | None = None
    """Builds `column` from the input frame when it is a derived boolean."""
    keep_first: bool = False
    """Uniqueness: GE flags every copy of a value; only the second and later copies fail."""
    table_level: bool = False
    """Runs even when `source` is missing, and then fails every row."""


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of checks; `timestamps` are read as UTC before checking."""

    name: str
    checks: tuple[Check, ...]
    timestamps: tuple[str, ...] = ()


def _show(value: Any) -> str:
    """Text quoted, so a reader sees `'42 '` is text; an id read as float without its `.0`."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def exists(column: str) -> Check:
    reason = f"column {column} is missing"
    return Check("ExpectColumnToExist", column, column, lambda _: reason, table_level=True)


def not_null(column: str) -> Check:
    return Check("ExpectColumnValuesToNotBeNull", column, column, lambda _: f"{column} is null")


def unique(column: str) -> Check:
    reason = f"duplicate {column}"
    return Check("ExpectColumnValuesToBeUnique", column, column, lambda _: reason, keep_first=True)


def in_set(column: str, values: Collection[str]) -> Check:
    return Check(
        "ExpectColumnValuesToBeInSet",
        column,
        column,
        lambda v: f"unknown {column} {_show(v)}",
        {"value_set": list(values)},
    )


def matches(column: str, regex: str, what: str) -> Check:
    return Check(
        "ExpectColumnValuesToMatchRegex",
        column,
        column,
        lambda v: f"{column} {_show(v)} is not {what}",
        {"regex": regex},
    )


def between(column: str, reason: Reason, low: Any = None, high: Any = None) -> Check:
    kwargs = {"min_value": low, "max_value": high}
    return Check("ExpectColumnValuesToBeBetween", column, column, reason, kwargs)


def length(column: str, low: int, high: int) -> Check:
    return Check(
        "ExpectColumnValueLengthsToBeBetween",
        column,
        column,
        lambda v: f"{column} has {len(v)} characters, outside {low}..{high}",
        {"min_value": low, "max_value": high},
    )


def at_most(column: str, high: float, low: float = 0, what: str = "") -> Check:
    """`column` in [low, high]: below reads "is negative" (low 0), above names the bound."""
    above = f"is above {high:g}" + (f" ({what})" if what else "")

    def reason(value: Any) -> str:
        return f"{column} {value} {'is negative' if value < low else above}"

    return between(column, reason, low, high)


def positive_id(column: str) -> Check:
    return between(column, lambda v: f"{column} {_show(v)} is not a positive id", 1, MAX_ID)


def flag(name: str, source: str, derive: Derive, reason: Reason) -> Check:
    """Expect the derived boolean column `name` (computed from `source`) to be True."""
    return Check("ExpectColumnValuesToBeInSet", name, source, reason, {"value_set": [True]}, derive)


def not_future(column: str, now: datetime) -> Check:
    return between(column, lambda v: f"{column} {v} is in the future", high=now)


def not_ancient(column: str) -> Check:
    return between(column, lambda v: f"{column} {v} is before {OLDEST:%Y-%m-%d}", low=OLDEST)


def known(column: str, ids: Collection[int], noun: str) -> Check:
    """`column` is null (another check's business) or one of `ids`."""
    index = pd.Index(list(ids))

    def derive(frame: pd.DataFrame) -> pd.Series[bool]:
        return frame[column].isin(index) | frame[column].isna()

    return flag(f"{column}_is_known", column, derive, lambda v: f"unknown {noun} {_show(v)}")


def _parses_as_timestamp(frame: pd.DataFrame) -> pd.Series[bool]:
    """ISO-8601 text or a datetime object (str() of one is ISO); null is not this check's business."""
    raw = frame["occurred_at"]
    parsed = pd.to_datetime(raw.astype("string"), utc=True, errors="coerce", format="ISO8601")
    return parsed.notna() | raw.isna()


def _present(schema: pa.Schema) -> list[Check]:
    return [exists(name) for name in schema.names]


def experience_interactions() -> Suite:
    """The app's raw rows as extracted: any column may hold text, so types are checked as text."""
    ids = ("id", "user_id", "issue_id")
    checks = [
        *(exists(name) for name in RAW_COLUMNS),
        *(not_null(name) for name in (*ids, "kind", "occurred_at")),
        *(matches(name, INTEGER, "an integer") for name in ids),
        in_set("kind", app_schema.INTERACTION_KINDS),
        flag(
            "occurred_at_is_timestamp",
            "occurred_at",
            _parses_as_timestamp,
            lambda v: f"occurred_at {_show(v)} is not a timestamp",
        ),
        matches("dwell_ms", NON_NEGATIVE_NUMBER, "a non-negative number"),
        matches("position", NON_NEGATIVE_INTEGER, "a non-negative integer"),
        length("rec_context", 0, MAX_REC_CONTEXT),
    ]
    return Suite("experience_interactions", tuple(checks))


def user_events(
    now: datetime, known_user_ids: Collection[int] | None, known_item_ids: Collection[int] | None
) -> Suite:
    """Canonical events; user and item references are checked only when the known ids are given."""
    references = []
    if known_user_ids is not None:
        references.append(known("user_id", known_user_ids, "user"))
    if known_item_ids is not None:
        references.append(known("item_id", known_item_ids, "item"))
    checks = [
        *_present(USER_EVENTS),
        *(not_null(name) for name in ("event_id", "user_id", "item_id", "event_type", "ts")),
        in_set("event_type", EVENT_TYPES),
        unique("event_id"),
        *references,
        not_future("ts", now),
        not_ancient("ts"),
        positive_id("user_id"),
        positive_id("item_id"),
        at_most("dwell_seconds", MAX_DWELL_SECONDS, what="one day"),
        between("read_fraction", lambda v: f"read_fraction {v} is not between 0 and 1", 0, 1),
        at_most("position", MAX_POSITION),
        *(length(column, low, high) for column, (low, high) in TEXT_LENGTHS.items()),
    ]
    return Suite("user_events", tuple(checks), timestamps=("ts",))


def items(now: datetime) -> Suite:
    checks = [
        *_present(ITEMS),
        *(
            not_null(name)
            for name in ("item_id", "publisher_id", "title", "category", "published_at")
        ),
        unique("item_id"),
        length("title", 1, 300),
        length("description", 0, 5000),
        not_future("published_at", now),
        not_ancient("published_at"),
    ]
    return Suite("items", tuple(checks), timestamps=("published_at",))


def users(now: datetime) -> Suite:
    checks = [
        *_present(USERS),
        not_null("user_id"),
        not_null("created_at"),
        unique("user_id"),
        not_future("created_at", now),
    ]
    return Suite("users", tuple(checks), timestamps=("created_at",))


SUITES: tuple[str, ...] = ("experience_interactions", "user_events", "items", "users")


def build(
    name: str,
    now: datetime,
    known_user_ids: Collection[int] | None = None,
    known_item_ids: Collection[int] | None = None,
) -> Suite:
    """The suite called `name`; `now` (naive means UTC) is the bound for "not in the future"."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    if name == "experience_interactions":
        return experience_interactions()
    if name == "user_events":
        return user_events(now, known_user_ids, known_item_ids)
    if name == "items":
        return items(now)
    if name == "users":
        return users(now)
    raise ValueError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
