"""Validate: run the Great Expectations suites on a staged batch and promote what passes to the lake.

Failed rows go to `quarantine/<table>/batch=<key>/validate.parquet` with the expectation that
failed; the batch fails when a table's bad-row share (ingest's quarantine included) is above the
configured threshold, after everything has been written, so nothing is lost either way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime

import pandas as pd

from inbo import schemas, tables
from inbo.errors import DataNotFound
from inbo.lake import Lake, batch_key
from inbo.locks import INGEST, platform_lock
from inbo.settings import Settings, get_settings
from pipelines.ingest import check_counts, quarantine_rows, write_quarantine
from pipelines.ingest import read_report as read_ingest_report

log = logging.getLogger(__name__)

SOURCES: dict[str, tuple[str, ...]] = {
    "users": ("users",),
    "items": ("newsletter_issues",),
    "user_events": ("experience_interactions", "reading_progress"),
}
"""Each staged table (validated by the suite of the same name, in this order, so events are checked
against the users and items that passed) and the source tables whose ingest quarantine counts
against its threshold."""

KNOWN_IDS = {"users": ("user_id", "known_user_ids"), "items": ("item_id", "known_item_ids")}


@dataclass
class ValidationReport:
    batch: str
    checked: dict[str, int] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    bad_share: dict[str, float] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)
    data_docs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def read_report(lake: Lake, batch: str) -> ValidationReport:
    """The report validation wrote for `batch`; `DataNotFound` before it ran."""
    return ValidationReport(**json.loads(lake.read_json(tables.VALIDATE_REPORTS, batch)))


def _ingest_counts(lake: Lake, batch: str) -> tuple[dict[str, int], dict[str, int]]:
    """What ingest extracted and quarantined for this batch, per source table."""
    report = read_ingest_report(lake, batch)
    return report.extracted, report.quarantined


def _write_events(lake: Lake, events: pd.DataFrame, batch: str) -> None:
    """Replace this batch's event files, one per event date."""
    for stale in lake.files(tables.USER_EVENTS.path, f"date=*/{batch}.parquet"):
        lake.fs.rm(stale)
    if not events.empty:
        lake.write_partitioned(
            events, tables.USER_EVENTS.path, batch, by="ts", schema=schemas.USER_EVENTS
        )


def promote_subscriptions(lake: Lake, batch: str, users: set[int]) -> None:
    """Subscriptions of users that passed validation, for the features that need them."""
    staged = lake.read_batch(tables.staging("subscriptions"), batch)
    kept = staged[staged["user_id"].isin(users)]
    if len(kept) < len(staged):
        log.warning("%d subscriptions of unknown users left out", len(staged) - len(kept))
    lake.write_batch(kept, tables.SUBSCRIPTIONS, batch)


def validate_batch(interval_end: datetime, settings: Settings | None = None) -> ValidationReport:
    """Validate the staged tables of the batch ending at `interval_end`."""
    from validation import enforce_threshold, validate

    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    extracted, ingest_bad = _ingest_counts(lake, batch)
    report = ValidationReport(batch=batch)
    docs_dir = settings.reports_dir / "data_docs"
    known: dict[str, set[int]] = {}
    bad_frames = []
    bad_rows: dict[str, int] = {}
    extracted_rows: dict[str, int] = {}
    for table, sources in SOURCES.items():
        schema = schemas.BY_NAME[table]
        staged = lake.read_batch(tables.staging(table), batch)
        result = validate(staged, table, now=interval_end, docs_dir=docs_dir, **known)
        good = schemas.conform(result.good, schema)
        if table == "user_events":
            _write_events(lake, good, batch)
        else:
            lake.write(good, table, "part", {"batch": batch}, schema)  # items or users
            id_column, argument = KNOWN_IDS[table]
            known[argument] = set(good[id_column].tolist())
        if not result.bad.empty:
            bad_frames.append(
                quarantine_rows(
                    result.bad.drop(columns=["_check", "_reason"]),
                    table,
                    result.bad["_check"],
                    result.bad["_reason"],
                )
            )
        extracted_rows[table] = sum(extracted.get(s, 0) for s in sources)
        bad_rows[table] = len(result.bad) + sum(ingest_bad.get(s, 0) for s in sources)
        report.checked[table] = result.checked
        report.passed[table] = len(good)
        report.quarantined[table] = len(result.bad)
        report.bad_share[table] = bad_rows[table] / max(extracted_rows[table], 1)
        if result.docs_path is not None:
            report.data_docs[table] = str(result.docs_path)
    promote_subscriptions(lake, batch, known.get("known_user_ids", set()))
    bad = pd.concat(bad_frames, ignore_index=True) if bad_frames else pd.DataFrame()
    write_quarantine(lake, bad, batch, "validate")
    if not bad.empty:
        report.checks = check_counts(bad)
    lake.write_json(report.to_json(), tables.VALIDATE_REPORTS, batch)
    log.info(
        "validated batch %s: %s passed, %s quarantined", batch, report.passed, report.quarantined
    )
    for table, page in report.data_docs.items():
        log.info("Data Docs for %s: %s", table, page)
    for table in SOURCES:
        enforce_threshold(
            table,
            bad_rows[table],
            extracted_rows[table],
            settings.quarantine_threshold,
            quarantine=lake.path(tables.QUARANTINE_ROOT),
        )
    return report


def validate_exclusive(
    interval_end: datetime, settings: Settings | None = None
) -> ValidationReport:
    """`validate_batch` under the ingest lock (see `ingest_exclusive`): what the DAGs run.

    A nightly and an hourly run closing at the same instant share a batch; the lock keeps them
    from rewriting its event files under each other.
    """
    settings = settings or get_settings()
    with platform_lock(settings, INGEST):
        return validate_batch(interval_end, settings)


def latest_validated_batch(lake: Lake) -> str:
    """The newest batch with a validation report in the lake."""
    batches = lake.names(tables.VALIDATE_REPORTS)
    if not batches:
        raise DataNotFound(
            f"no validated batch in {lake.url}: run `inbo demo` (or the nightly DAG) first"
        )
    return batches[-1]
