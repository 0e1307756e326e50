"""Validate: run the Great Expectations suites on a staged batch, then publish it or hold it.

Write-audit-publish. The suites audit the staged tables; failed rows go to
`quarantine/<table>/batch=<key>/validate.parquet` with the expectation that failed. A batch whose
bad-row share (ingest's quarantine included) is within the configured threshold for every table
is published: its good rows go into the tables later runs read (`user_events/date=*/<batch>.parquet`,
`items`, `users`, `subscriptions` under `batch=<key>`). A batch above it is held: the same rows go
to `held/<table>/batch=<key>/` instead, anything it published before is taken back, and the step
fails, so no later nightly trains on it and no hourly run refreshes from it. It stays held until a
re-run passes (it is then published like any other) or an operator accepts it as it is
(`accept_batch`, `inbo validate --accept BATCH`). The report (`_reports/validate/<batch>.json`)
says which: `status` is passed, held or accepted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from inbo import schemas, tables
from inbo.errors import DataNotFound, ValidationFailed
from inbo.lake import Lake, batch_key
from inbo.locks import INGEST, platform_lock
from inbo.settings import Settings, get_settings
from pipelines.ingest import check_counts, quarantine_rows, write_quarantine
from pipelines.ingest import read_report as read_ingest_report
from validation import ValidationResult
from validation.docs import Verdict, record

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

PUBLISHED: dict[str, tables.Table] = {
    "user_events": tables.USER_EVENTS,
    "items": tables.ITEMS,
    "users": tables.USERS,
    "subscriptions": tables.SUBSCRIPTIONS,
}
"""What a batch publishes when it passes (or is accepted), and holds when it does not."""

PASSED, HELD, ACCEPTED = "passed", "held", "accepted"
"""A report's `status`."""


@dataclass
class ValidationReport:
    batch: str
    checked: dict[str, int] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)
    """Rows that passed the suites, per table (published, or held when the batch is)."""
    quarantined: dict[str, int] = field(default_factory=dict)
    bad_share: dict[str, float] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)
    data_docs: dict[str, str] = field(default_factory=dict)
    status: str = PASSED
    """`passed`: published. `held`: a table's bad share is above the threshold; the rows that
    passed are under `held/`, not in the lake (`held` counts them). `accepted`: was held, and an
    operator published it as it is (`accepted_by`, `accepted_at`). A report written before this
    field existed is of a published batch, so it reads as passed."""
    held: dict[str, int] = field(default_factory=dict)
    """Rows held out of the lake per table, while the batch is held."""
    accepted_by: str | None = None
    accepted_at: str | None = None
    """When the batch was accepted (UTC, ISO 8601)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def read_report(lake: Lake, batch: str) -> ValidationReport:
    """The report validation wrote for `batch`; `DataNotFound` before it ran."""
    raw = json.loads(lake.read_json(tables.VALIDATE_REPORTS, batch))
    known = {f.name for f in fields(ValidationReport)}
    return ValidationReport(**{key: value for key, value in raw.items() if key in known})


def _previous_report(lake: Lake, batch: str) -> ValidationReport | None:
    try:
        return read_report(lake, batch)
    except DataNotFound:
        return None


def _ingest_counts(lake: Lake, batch: str) -> tuple[dict[str, int], dict[str, int]]:
    """What ingest extracted and quarantined for this batch, per source table."""
    report = read_ingest_report(lake, batch)
    return report.extracted, report.quarantined


# --- publishing and holding a batch's validated tables ---


def _publish(lake: Lake, batch: str, frames: dict[str, pd.DataFrame]) -> None:
    """Write the batch's tables where later runs read them; its event files are replaced."""
    for stale in lake.files(tables.USER_EVENTS.path, f"date=*/{batch}.parquet"):
        lake.fs.rm(stale)
    events = frames["user_events"]
    if not events.empty:
        lake.write_partitioned(
            events, tables.USER_EVENTS.path, batch, by="ts", schema=schemas.USER_EVENTS
        )
    for name, table in PUBLISHED.items():
        if name != "user_events":
            lake.write_batch(frames[name], table, batch)


def _unpublish(lake: Lake, batch: str) -> None:
    """Take back what an earlier run of the batch published (nothing if it never did)."""
    for stale in lake.files(tables.USER_EVENTS.path, f"date=*/{batch}.parquet"):
        lake.fs.rm(stale)
    for name, table in PUBLISHED.items():
        if name != "user_events":
            lake.remove(table.path, {"batch": batch})


def _hold(lake: Lake, batch: str, frames: dict[str, pd.DataFrame]) -> None:
    for name in PUBLISHED:
        lake.write_batch(frames[name], tables.held(name), batch)


def _release(lake: Lake, batch: str) -> None:
    """Delete the batch's held tables (once published, or when a re-run passed)."""
    for name in PUBLISHED:
        lake.remove(tables.held(name).path, {"batch": batch})


def validated_subscriptions(lake: Lake, batch: str, users: set[int]) -> pd.DataFrame:
    """Subscriptions of users that passed validation, for the features that need them."""
    staged = lake.read_batch(tables.staging("subscriptions"), batch)
    kept = staged[staged["user_id"].isin(users)]
    if len(kept) < len(staged):
        log.warning("%d subscriptions of unknown users left out", len(staged) - len(kept))
    return kept


def _still_accepted(previous: ValidationReport | None, report: ValidationReport) -> bool:
    """An acceptance covers the batch as the operator saw it: a re-run with the same verdict
    (same rows checked and quarantined) stays accepted; a different one is audited again."""
    return (
        previous is not None
        and previous.status == ACCEPTED
        and (previous.checked, previous.quarantined, previous.bad_share)
        == (report.checked, report.quarantined, report.bad_share)
    )


def validate_batch(interval_end: datetime, settings: Settings | None = None) -> ValidationReport:
    """Validate the staged tables of the batch ending at `interval_end`; publish or hold them.

    Raises `ValidationFailed` when the batch is held, after writing the quarantine, the held
    tables and the report.
    """
    from validation import enforce_threshold, exceeds, validate

    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    extracted, ingest_bad = _ingest_counts(lake, batch)
    previous = _previous_report(lake, batch)
    report = ValidationReport(batch=batch)
    results: dict[str, ValidationResult] = {}
    known: dict[str, set[int]] = {}
    frames: dict[str, pd.DataFrame] = {}
    bad_frames = []
    bad_rows: dict[str, int] = {}
    extracted_rows: dict[str, int] = {}
    for table, sources in SOURCES.items():
        schema = schemas.BY_NAME[table]
        staged = lake.read_batch(tables.staging(table), batch)
        results[table] = result = validate(staged, table, now=interval_end, **known)
        frames[table] = good = schemas.conform(result.good, schema)
        if table in KNOWN_IDS:
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
    frames["subscriptions"] = validated_subscriptions(
        lake, batch, known.get("known_user_ids", set())
    )
    bad = pd.concat(bad_frames, ignore_index=True) if bad_frames else pd.DataFrame()
    write_quarantine(lake, bad, batch, "validate")
    if not bad.empty:
        report.checks = check_counts(bad)

    threshold = settings.quarantine_threshold
    above = [t for t in SOURCES if exceeds(bad_rows[t], extracted_rows[t], threshold)]
    if above and previous is not None and _still_accepted(previous, report):
        report.status = ACCEPTED
        report.accepted_by, report.accepted_at = previous.accepted_by, previous.accepted_at
    elif above:
        report.status = HELD
        report.held = {name: len(frame) for name, frame in frames.items()}
    verdicts = [
        (results[t], Verdict(batch, report.status, bad_rows[t], extracted_rows[t], threshold))
        for t in SOURCES
    ]
    pages = record(verdicts, interval_end, *history_dirs(settings))
    report.data_docs = {table: str(page) for table, page in pages.items()}
    if report.status == HELD:
        _hold(lake, batch, frames)
        _unpublish(lake, batch)
        lake.write_json(report.to_json(), tables.VALIDATE_REPORTS, batch)
    else:
        _publish(lake, batch, frames)
        lake.write_json(report.to_json(), tables.VALIDATE_REPORTS, batch)
        _release(lake, batch)
    log.info(
        "validated batch %s (%s): %s passed, %s quarantined",
        batch,
        report.status,
        report.passed,
        report.quarantined,
    )
    for table, page in report.data_docs.items():
        log.info("Data Docs for %s: %s", table, page)
    if report.status == ACCEPTED:
        log.warning(
            "batch %s is above the %.2f%% quarantine threshold (%s) and stays published: "
            "accepted by %s at %s",
            batch,
            threshold * 100,
            ", ".join(above),
            report.accepted_by,
            report.accepted_at,
        )
        return report
    try:
        for table in SOURCES:
            enforce_threshold(
                table,
                bad_rows[table],
                extracted_rows[table],
                threshold,
                quarantine=lake.path(tables.QUARANTINE_ROOT),
            )
    except ValidationFailed as failed:
        raise ValidationFailed(
            f"{failed}. The batch's rows are held under {lake.path(tables.HELD_ROOT)}, out of "
            f"the tables later runs read: re-run it once fixed, or publish it as it is with "
            f"`inbo validate --accept {batch}`"
        ) from None
    return report


def history_dirs(settings: Settings) -> tuple[Path, Path]:
    """Great Expectations' stores (every batch's validation results) and the Data Docs site."""
    return settings.var_dir / "great_expectations", settings.reports_dir / "data_docs"


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


def accept_batch(batch: str, by: str, settings: Settings | None = None) -> ValidationReport:
    """Publish the held batch `batch` as it is, on an operator's word: logged, and recorded in its
    report (`accepted_by`, `accepted_at`).

    Idempotent: a batch already accepted is left as it was (and its first acceptance stands); a
    batch that passed has nothing to accept. Either way its report is returned.
    """
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    report = _previous_report(lake, batch)
    if report is None:
        raise DataNotFound(
            f"batch {batch} was not validated: nothing to accept (run `inbo validate` for it)"
        )
    if report.status == ACCEPTED:
        log.info("batch %s was accepted by %s at %s", batch, report.accepted_by, report.accepted_at)
        return report
    if report.status != HELD:
        log.info("batch %s passed validation: nothing to accept", batch)
        return report
    frames = {name: lake.read_batch(tables.held(name), batch) for name in PUBLISHED}
    _publish(lake, batch, frames)
    events = report.held.get("user_events", 0)
    report.status, report.held = ACCEPTED, {}
    report.accepted_by, report.accepted_at = by, datetime.now(UTC).isoformat()
    lake.write_json(report.to_json(), tables.VALIDATE_REPORTS, batch)
    _release(lake, batch)
    log.warning(
        "batch %s accepted by %s: %s user_events held above the quarantine threshold are "
        "published (bad shares %s)",
        batch,
        by,
        f"{events:,}",
        ", ".join(f"{table} {share:.2%}" for table, share in report.bad_share.items()),
    )
    return report


def accept_exclusive(batch: str, by: str, settings: Settings | None = None) -> ValidationReport:
    """`accept_batch` under the ingest lock, so no validation of the batch runs meanwhile."""
    settings = settings or get_settings()
    with platform_lock(settings, INGEST):
        return accept_batch(batch, by, settings)


def latest_validated_batch(lake: Lake) -> str:
    """The newest batch validated and published (passed or accepted): a held one is not."""
    for batch in reversed(lake.names(tables.VALIDATE_REPORTS)):
        if read_report(lake, batch).status != HELD:
            return batch
    raise DataNotFound(
        f"no validated batch in {lake.url}: run `inbo demo` (or the nightly DAG) first"
    )
