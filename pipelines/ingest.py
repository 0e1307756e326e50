"""Ingest: extract the app's rows for one batch and turn them into canonical tables.

Which rows a batch reads, exactly once, is `pipelines.extract`; this module converts them. Every
extracted row ends up either converted or quarantined with a reason:
converted + quarantined = extracted, always.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from inbo import schemas, tables
from inbo.app_schema import KIND_TO_EVENT_TYPE
from inbo.errors import SourceError
from inbo.lake import Lake, batch_key
from inbo.locks import INGEST, platform_lock
from inbo.settings import Settings, get_settings
from pipelines.app.sources import (
    INCREMENTAL_TABLES,
    Source,
    Watermark,
    as_strings,
    open_source,
)
from pipelines.extract import completeness, completeness_json, extract_batch

log = logging.getLogger(__name__)


@dataclass
class Converted:
    """Rows that converted, and the ones that did not with why."""

    good: pd.DataFrame
    bad: pd.DataFrame


@dataclass
class IngestReport:
    batch: str
    source: str
    watermarks: dict[str, dict[str, Watermark | None]]
    extracted: dict[str, int] = field(default_factory=dict)
    converted: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)
    completeness: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per app table: its rows up to the head against the rows some batch extracted."""

    @property
    def conversion_rate(self) -> float:
        """Share of extracted event rows (interactions and progress) that became user events."""
        tables = [t.name for t in INCREMENTAL_TABLES]
        extracted = sum(self.extracted.get(t, 0) for t in tables)
        converted = sum(self.converted.get(t, 0) for t in tables)
        return converted / extracted if extracted else 1.0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "conversion_rate": self.conversion_rate}, indent=2)


def read_report(lake: Lake, batch: str) -> IngestReport:
    """The report ingest wrote for `batch`; `DataNotFound` before it ran."""
    raw = json.loads(lake.read_json(tables.INGEST_REPORTS, batch))
    raw.pop("conversion_rate", None)
    return IngestReport(**raw)


def latest_report(settings: Settings) -> IngestReport | None:
    """The report of the newest batch ingested, None before any."""
    lake = Lake(settings.lake)
    batches = sorted(lake.names(tables.INGEST_REPORTS))
    return read_report(lake, batches[-1]) if batches else None


# --- parsing helpers: each returns the parsed column and the mask of values that failed to parse ---


def parse_int(raw: pd.Series, bits: int = 64) -> tuple[pd.Series, pd.Series]:
    """Whole numbers that fit a signed `bits`-bit integer (the lake column's type); others fail."""
    numbers = pd.to_numeric(raw, errors="coerce").astype("float64")
    limit = float(2 ** (bits - 1))  # exact in float64; 2**63 itself is one past int64
    whole = numbers.notna() & (numbers == np.floor(numbers.fillna(0))) & (numbers.abs() < limit)
    exact = pd.to_numeric(raw.where(whole), errors="coerce")  # as integers again, no float rounding
    failed = raw.notna() & ~whole
    return exact.astype("Int64"), failed


def parse_int32(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    return parse_int(raw, bits=32)


def parse_float(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    numbers = pd.to_numeric(raw, errors="coerce").astype("Float64")
    return numbers, raw.notna() & numbers.isna()


def parse_ts(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """ISO-8601 text as UTC timestamps, truncated to the lake's microseconds.

    Digits below the microsecond (an exporter writing nanoseconds) carry nothing the platform
    uses, and the app's own DateTime column cannot hold them: they are dropped towards the past,
    so the event keeps its instant to the microsecond and never moves past its batch end.
    """
    stamps = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
    truncated = stamps.dt.floor("us")
    finer = int((truncated != stamps).sum())
    if finer:
        log.info("%s: %d timestamps truncated to microseconds", raw.name, finer)
    return truncated, raw.notna() & stamps.isna()


Parser = Callable[[pd.Series], tuple[pd.Series, pd.Series]]


def convert_columns(
    raw: pd.DataFrame, parsers: dict[str, Parser], table: str
) -> tuple[dict[str, pd.Series], pd.DataFrame]:
    """Parse the typed columns of `raw`; rows where a present value does not parse go to `bad`."""
    parsed: dict[str, pd.Series] = {}
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")
    for column, parser in parsers.items():
        values, failed = parser(raw[column])
        parsed[column] = values
        text = (
            "conversion: " + column + " '" + raw[column].astype("string") + "' is not a valid value"
        )
        reason = reason.where(reason.notna() | ~failed, text)
    failed_rows = reason.notna()
    bad = quarantine_rows(raw[failed_rows], table, "conversion", reason[failed_rows])
    return {name: values[~failed_rows] for name, values in parsed.items()}, bad


def quarantine_rows(
    rows: pd.DataFrame, table: str, check: str | pd.Series, reason: str | pd.Series
) -> pd.DataFrame:
    """`rows` as strings plus the quarantine columns, ready to be written with a batch key."""
    out = as_strings(rows)
    out["_table"] = table
    out["_check"] = check if isinstance(check, str) else check.to_numpy()
    out["_reason"] = reason if isinstance(reason, str) else reason.to_numpy()
    return out


CAST_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    OverflowError,
    TypeError,
    ValueError,
)
"""What pyarrow raises on a value its target type cannot hold (wrong kind, overflow, lost digits)."""


def fit_schema(
    canonical: pd.DataFrame, raw: pd.DataFrame, schema: pa.Schema, table: str
) -> Converted:
    """`canonical` cast to `schema`; a row with a value the schema's type cannot hold is
    quarantined (as its raw row, with the column and the value) instead of failing the batch.

    The parsers above already turn every value they know to be wrong into a quarantined row; this
    is the net under them, so that no value, whatever its kind, makes a batch unrecoverable: a
    re-run converts the same landed raw rows, and would fail the same way forever. `canonical` is
    indexed like `raw`, the rows it was converted from. One cast when every value fits.
    """
    try:
        return Converted(schemas.conform(canonical, schema), pd.DataFrame())
    except CAST_ERRORS:
        pass
    reason = pd.Series(pd.NA, index=range(len(canonical)), dtype="string")
    for column in schema:
        values = canonical[column.name].reset_index(drop=True)
        for position in _misfits(values, column.type):
            if pd.isna(reason.iloc[position]):
                shown = repr(values.iloc[position])
                shown = shown if len(shown) <= 100 else shown[:100] + "..."
                reason.iloc[position] = (
                    f"conversion: {column.name} {shown} does not fit {column.type}"
                )
    failed = reason.notna().to_numpy()
    good = schemas.conform(canonical[~failed], schema)
    bad = quarantine_rows(raw.loc[canonical.index[failed]], table, "conversion", reason[failed])
    log.warning("%s: %d rows hold a value their canonical column cannot", table, len(bad))
    return Converted(good, bad)


def _fits(values: pd.Series, type_: pa.DataType, *, strict: bool) -> bool:
    """Whether `values` cast to `type_`: as `schemas.conform` casts, or (`strict`) value by value
    for an object column, so a number among texts fails by itself rather than the column."""
    try:
        if strict and values.dtype == object:
            pa.array(values, type=type_, from_pandas=True)
        else:
            pa.Array.from_pandas(values).cast(type_)
    except CAST_ERRORS:
        return False
    return True


def _misfits(values: pd.Series, type_: pa.DataType) -> list[int]:
    """Positions of the values `type_` cannot hold, by bisection: a few casts per bad value."""
    if _fits(values, type_, strict=False):
        return []
    found = []
    pending = [(0, len(values))]
    while pending:
        start, stop = pending.pop()
        if _fits(values.iloc[start:stop], type_, strict=True):
            continue
        if stop - start == 1:
            found.append(start)
            continue
        middle = (start + stop) // 2
        pending += [(middle, stop), (start, middle)]
    return sorted(found)


REC_CONTEXT_KEYS = {
    "rec_table_version": "table_version",
    "rec_source": "source",
    "rec_variant": "variant",
}
"""Canonical column <- key of the app's JSON `rec_context`."""


def _rec_context(raw: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Split the app's JSON `rec_context` into the three recommendation columns.

    Also the reason each row that cannot split failed (null when it split): not JSON, not an
    object, or a field that is not text (a number or an object where a table version belongs).
    """
    values: list[list[str | None]] = []
    reasons: list[str | None] = []
    for text in raw.tolist():
        row: list[str | None] = [None] * len(REC_CONTEXT_KEYS)
        reason = None
        if not (text is None or text is pd.NA):
            try:
                payload = json.loads(text)
            except (json.JSONDecodeError, TypeError):
                payload = None
            if not isinstance(payload, dict):
                reason = "rec_context is not valid JSON"
            else:
                fields = [payload.get(key) for key in REC_CONTEXT_KEYS.values()]
                wrong = [
                    (key, value)
                    for key, value in zip(REC_CONTEXT_KEYS.values(), fields, strict=True)
                    if value is not None and not isinstance(value, str)
                ]
                if wrong:
                    key, value = wrong[0]
                    reason = f"rec_context {key} {json.dumps(value)[:100]} is not text"
                else:
                    row = fields
        values.append(row)
        reasons.append(reason)
    context = pd.DataFrame(values, columns=list(REC_CONTEXT_KEYS), index=raw.index, dtype=object)
    return context, pd.Series(reasons, index=raw.index, dtype="string")


def convert_interactions(raw: pd.DataFrame) -> Converted:
    """One `experience_interactions` row -> one canonical user event, or a quarantined row."""
    table = "experience_interactions"
    kinds = raw["kind"].map(KIND_TO_EVENT_TYPE)
    context, context_failed = _rec_context(raw["rec_context"])
    unknown_kind = kinds.isna()
    pre_bad = unknown_kind | context_failed.notna()
    reasons = context_failed.where(
        ~unknown_kind, "unknown interaction kind '" + raw["kind"].astype(str) + "'"
    )
    bad_first = quarantine_rows(raw[pre_bad], table, "conversion", reasons[pre_bad])
    rows = raw[~pre_bad]
    parsed, bad = convert_columns(
        rows,
        {
            "id": parse_int,
            "user_id": parse_int,
            "issue_id": parse_int,
            "occurred_at": parse_ts,
            "dwell_ms": parse_float,
            "position": parse_int32,
        },
        table,
    )
    kept = parsed["id"].index
    events = pd.DataFrame(
        {
            "event_id": "ei-" + parsed["id"].astype("string"),
            "user_id": parsed["user_id"],
            "item_id": parsed["issue_id"],
            "event_type": kinds[kept],
            "ts": parsed["occurred_at"],
            "session_id": rows.loc[kept, "session_id"],
            "dwell_seconds": parsed["dwell_ms"] / 1000.0,
            "read_fraction": pd.Series(np.nan, index=kept),
            "position": parsed["position"],
            "surface": rows.loc[kept, "surface"],
            "device": rows.loc[kept, "device"],
            "country": rows.loc[kept, "country"],
        }
    ).join(context.loc[kept])
    fitted = fit_schema(events, rows, schemas.USER_EVENTS, table)
    return Converted(fitted.good, _concat(bad_first, bad, fitted.bad))


def convert_progress(raw: pd.DataFrame) -> Converted:
    """Each reading-progress state -> one canonical `read` event carrying the read fraction."""
    parsed, bad = convert_columns(
        raw,
        {
            "user_id": parse_int,
            "issue_id": parse_int,
            "progress": parse_float,
            "seconds_read": parse_float,
            "updated_at": parse_ts,
        },
        "reading_progress",
    )
    kept = parsed["user_id"].index
    stamp = parsed["updated_at"].dt.strftime("%Y%m%dT%H%M%S%f")
    events = pd.DataFrame(
        {
            "event_id": "rp-"
            + parsed["user_id"].astype("string")
            + "-"
            + parsed["issue_id"].astype("string")
            + "-"
            + stamp,
            "user_id": parsed["user_id"],
            "item_id": parsed["issue_id"],
            "event_type": "read",
            "ts": parsed["updated_at"],
            "session_id": raw.loc[kept, "session_id"],
            "dwell_seconds": parsed["seconds_read"],
            "read_fraction": parsed["progress"],
            "position": pd.Series(pd.NA, index=kept, dtype="Int64"),
            "surface": "reader",
            "device": raw.loc[kept, "device"],
            "country": pd.Series(None, index=kept, dtype="string"),
            "rec_table_version": None,
            "rec_source": None,
            "rec_variant": None,
        }
    )
    fitted = fit_schema(events, raw, schemas.USER_EVENTS, "reading_progress")
    return Converted(fitted.good, _concat(bad, fitted.bad))


def convert_items(issues: pd.DataFrame, publishers: pd.DataFrame) -> Converted:
    """Newsletter issues joined with their publisher -> canonical items."""
    names = publishers.set_index("id")["name"]
    publisher_name = issues["publisher_id"].map(names)
    orphan = publisher_name.isna() & issues["publisher_id"].notna()
    bad_orphan = quarantine_rows(
        issues[orphan],
        "newsletter_issues",
        "conversion",
        "publisher_id '" + issues.loc[orphan, "publisher_id"].astype(str) + "' has no publisher",
    )
    rows = issues[~orphan]
    parsed, bad = convert_columns(
        rows,
        {"id": parse_int, "publisher_id": parse_int, "published_at": parse_ts},
        "newsletter_issues",
    )
    kept = parsed["id"].index
    tags = rows.loc[kept, "tags"].map(
        lambda text: (
            [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else []
        ),
        na_action=None,
    )
    items = pd.DataFrame(
        {
            "item_id": parsed["id"],
            "publisher_id": parsed["publisher_id"],
            "publisher": publisher_name[kept],
            "title": rows.loc[kept, "title"],
            "description": rows.loc[kept, "body_preview"],
            "category": rows.loc[kept, "category"],
            "tags": tags,
            "published_at": parsed["published_at"],
            "language": rows.loc[kept, "language"],
        }
    )
    fitted = fit_schema(items, rows, schemas.ITEMS, "newsletter_issues")
    return Converted(fitted.good, _concat(bad_orphan, bad, fitted.bad))


def convert_users(raw: pd.DataFrame) -> Converted:
    parsed, bad = convert_columns(raw, {"id": parse_int, "created_at": parse_ts}, "users")
    kept = parsed["id"].index
    users = pd.DataFrame(
        {
            "user_id": parsed["id"],
            "created_at": parsed["created_at"],
            "country": raw.loc[kept, "country"],
            "language": raw.loc[kept, "language"],
        }
    )
    fitted = fit_schema(users, raw, schemas.USERS, "users")
    return Converted(fitted.good, _concat(bad, fitted.bad))


def convert_subscriptions(raw: pd.DataFrame) -> Converted:
    parsed, bad = convert_columns(
        raw,
        {
            "user_id": parse_int,
            "publisher_id": parse_int,
            "subscribed_at": parse_ts,
            "unsubscribed_at": parse_ts,
        },
        "subscriptions",
    )
    fitted = fit_schema(pd.DataFrame(parsed), raw, schemas.SUBSCRIPTIONS, "subscriptions")
    return Converted(fitted.good, _concat(bad, fitted.bad))


def _concat(*bad: pd.DataFrame) -> pd.DataFrame:
    """Quarantined frames as one (empty ones left out, so no column changes type)."""
    frames = [frame for frame in bad if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def check_raw_interactions(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw-interactions suite: (quarantined rows, rows fit to convert)."""
    from validation import validate

    if raw.empty:
        return pd.DataFrame(), raw
    checked = validate(raw, "experience_interactions")
    bad = quarantine_rows(
        checked.bad.drop(columns=["_check", "_reason"]),
        "experience_interactions",
        checked.bad["_check"],
        checked.bad["_reason"],
    )
    return bad, checked.good


REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "experience_interactions": (
        "id",
        "user_id",
        "issue_id",
        "kind",
        "occurred_at",
        "session_id",
        "dwell_ms",
        "position",
        "surface",
        "device",
        "country",
        "rec_context",
    ),
    "reading_progress": (
        "user_id",
        "issue_id",
        "progress",
        "seconds_read",
        "updated_at",
        "session_id",
        "device",
    ),
    "newsletter_issues": (
        "id",
        "publisher_id",
        "title",
        "body_preview",
        "category",
        "tags",
        "published_at",
        "language",
    ),
    "publishers": ("id", "name"),
    "users": ("id", "created_at", "country", "language"),
    "subscriptions": ("user_id", "publisher_id", "subscribed_at", "unsubscribed_at"),
}
"""What each raw table must have for conversion; a source without them is broken, not dirty."""


def check_columns(raw: dict[str, pd.DataFrame]) -> None:
    for table, required in REQUIRED_COLUMNS.items():
        frame = raw[table]
        missing = [column for column in required if column not in frame.columns]
        if not frame.empty and missing:
            raise SourceError(
                f"{table} has no column(s) {missing}; its rows are kept under raw/{table}/"
            )


def convert_all(raw: dict[str, pd.DataFrame]) -> dict[str, Converted]:
    """Every raw table of the batch converted; an empty table converts to an empty one."""
    check_columns(raw)

    def unless_empty(table: str, schema: pa.Schema, convert: Callable[[], Converted]) -> Converted:
        if raw[table].empty:
            return Converted(schemas.empty(schema), pd.DataFrame())
        return convert()

    return {
        "experience_interactions": unless_empty(
            "experience_interactions",
            schemas.USER_EVENTS,
            lambda: convert_interactions(raw["experience_interactions"]),
        ),
        "reading_progress": unless_empty(
            "reading_progress",
            schemas.USER_EVENTS,
            lambda: convert_progress(raw["reading_progress"]),
        ),
        "newsletter_issues": unless_empty(
            "newsletter_issues",
            schemas.ITEMS,
            lambda: convert_items(raw["newsletter_issues"], raw["publishers"]),
        ),
        "users": unless_empty("users", schemas.USERS, lambda: convert_users(raw["users"])),
        "subscriptions": unless_empty(
            "subscriptions",
            schemas.SUBSCRIPTIONS,
            lambda: convert_subscriptions(raw["subscriptions"]),
        ),
    }


# --- the step ---


def ingest(
    interval_end: datetime,
    settings: Settings | None = None,
    source: Source | None = None,
) -> IngestReport:
    """Extract one batch from the source, validate raw interactions, stage canonical tables."""
    settings = settings or get_settings()
    source = source or open_source("appdb", settings.app_db)
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    plan, raw = extract_batch(lake, source, batch, interval_end, settings.ingest_gap_days)
    report = IngestReport(batch=batch, source=source.name, watermarks=plan)
    report.completeness = completeness_json(completeness(lake, source, plan, batch))
    report.extracted = {name: len(frame) for name, frame in raw.items()}

    raw_bad, raw["experience_interactions"] = check_raw_interactions(raw["experience_interactions"])
    results = convert_all(raw)
    report.converted = {name: len(result.good) for name, result in results.items()}
    staged = {
        "user_events": pd.concat(
            [results["experience_interactions"].good, results["reading_progress"].good],
            ignore_index=True,
        ),
        "items": results["newsletter_issues"].good,
        "users": results["users"].good,
        "subscriptions": results["subscriptions"].good,
    }
    for name, frame in staged.items():
        staging = tables.staging(name)
        lake.write_batch(schemas.conform(frame, staging.schema), staging, batch)

    bad_frames = [raw_bad, *(result.bad for result in results.values())]
    bad = (
        pd.concat([b for b in bad_frames if not b.empty], ignore_index=True)
        if any(not b.empty for b in bad_frames)
        else pd.DataFrame()
    )
    write_quarantine(lake, bad, batch, "ingest")
    if not bad.empty:
        report.quarantined = {str(k): int(v) for k, v in Counter(bad["_table"]).items()}
        report.checks = check_counts(bad)
    lake.write_json(report.to_json(), tables.INGEST_REPORTS, batch)
    log.info(
        "ingested batch %s from %s: %s extracted, conversion rate %.2f%%, %d quarantined",
        batch,
        source.name,
        report.extracted,
        100 * report.conversion_rate,
        len(bad),
    )
    return report


def ingest_exclusive(interval_end: datetime, settings: Settings | None = None) -> IngestReport:
    """`ingest` under the platform's ingest lock: what the DAGs and the CLI run.

    The nightly and hourly DAGs share one watermark stream; two runs planning watermarks at the
    same moment would read the same rows twice. The source is opened first, so a missing app
    database fails before the lock starts an embedded Redis for nothing.
    """
    settings = settings or get_settings()
    source = open_source("appdb", settings.app_db)
    with platform_lock(settings, INGEST):
        return ingest(interval_end, settings, source)


def check_counts(bad: pd.DataFrame) -> dict[str, int]:
    """Counts per failed check, the stable part of a reason (the sentence names the value)."""
    return {str(k): int(v) for k, v in bad["_check"].value_counts().items()}


def write_quarantine(lake: Lake, bad: pd.DataFrame, batch: str, stage: str) -> str | None:
    """Write a stage's quarantined rows for a batch, one file per source table (or clear stale ones)."""
    written = None
    for path in lake.files(tables.QUARANTINE_ROOT, f"*/batch={batch}/{stage}.parquet"):
        lake.fs.rm(path)
    if bad.empty:
        return None
    bad = bad.assign(_batch=batch)
    for table, rows in bad.groupby("_table", sort=True):
        written = lake.write(
            rows.astype("string"), tables.quarantine(str(table)).path, stage, {"batch": batch}
        )
    return written
