"""Extract: which rows of the app's tables a batch reads, so that every row is read exactly once.

A watermark alone loses rows, so each incremental table of the app database has a second look:
- `experience_interactions` is append-only with a database id, but ids are not commit-ordered
  (a sequence hands one out at insert, the transaction commits later). Each batch reads the ids
  above the head and re-reads the *gap set*: ids below the head that were missing when their range
  was read. An id still missing after `ingest_gap_days` was a rolled-back insert; it leaves the set.
- `reading_progress` is mutable and the app writes its `updated_at` (late commits, clocks set
  back). Each batch reads the rows updated in (low, high] and *sweeps* the rest: it compares every
  row's (user, issue, updated_at) at or below low with the *ledger*, the version last taken per
  key, and takes the rows that differ. A version is taken once, whatever its timestamp says.

State, under `_state/watermarks/<source>/`:
- `<batch>.json`: the batch's plan (per table: low, high, the gap ids to re-read), recorded on the
  first run and reused by re-runs, which convert the raw rows the first run landed;
- `_head.json`: after the last batch folded in, the highs, open gaps, rows taken and ledger; and
  `pending`, the batch planned from it whose outcome is not folded in yet. A batch that finds
  another one pending (it died) folds it in from its landed raw rows or, if it died before landing
  them, adopts its range and empties its plan: no range is read twice, none is skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from inbo import tables
from inbo.faults import crash_point
from inbo.lake import Lake, batch_end
from pipelines.app.sources import (
    INCREMENTAL_TABLES,
    SNAPSHOT_TABLES,
    IncrementalTable,
    LooksUpRows,
    Source,
    Watermark,
)

log = logging.getLogger(__name__)

HEAD = "_head"
"""Name of the manifest holding the state after the last batch folded in."""
INTERACTIONS, PROGRESS = (table.name for table in INCREMENTAL_TABLES)
RAW_TABLES = tuple(t.name for t in INCREMENTAL_TABLES) + tuple(SNAPSHOT_TABLES)
SHOWN_IDS = 20
"""Missing ids named in a completeness warning; the count is always complete."""

Plan = dict[str, dict[str, Any]]
"""Per incremental table: `low` (exclusive), `high` (inclusive), `recheck` (gap id ranges to
re-read) and `sweep` (compare older rows with the ledger)."""
Runs = list[list[int]]
"""Ids as inclusive [first, last] runs: a gap set stays small however many ids it holds."""
FIRST_ID = 1
"""Where a sequence starts: the first batch's gaps run from here (an id below the smallest one
read may be a transaction still open)."""


@dataclass
class Head:
    """What every batch folded in so far has read, per incremental table."""

    high: dict[str, Watermark] = field(default_factory=dict)
    gaps: dict[str, Runs] = field(default_factory=dict)
    """Interaction ids missing below the head, by the batch that first missed them."""
    taken: dict[str, int] = field(default_factory=dict)
    ledger: str | None = None
    """Batch whose ledger snapshot (version taken per reading-progress key) is current."""
    by: str | None = None
    pending: str | None = None

    @property
    def open_gaps(self) -> Runs:
        return runs(np.concatenate([expand(r) for r in self.gaps.values()] or [np.array([])]))


@dataclass(frozen=True)
class Completeness:
    """App rows up to the batch's high watermark versus rows some batch extracted."""

    app_rows: int
    extracted_rows: int
    missing: list[str]
    """Ids (or `user:issue` keys) the app has and no batch extracted yet, at most `SHOWN_IDS`."""
    missing_rows: int


def extract_batch(
    lake: Lake, source: Source, batch: str, until: datetime, gap_days: float
) -> tuple[Plan, dict[str, pd.DataFrame]]:
    """The batch's plan and raw tables: planned and read on the first run, reused on re-runs.

    The head moves only once the raw rows are landed, so a batch that dies in between leaves a
    range that the next batch (or its own retry) reads, never one that nobody reads.
    """
    folder = _folder(source)
    head = read_head(lake, folder)
    if head.pending not in (None, batch):
        head = _settle(lake, source, head, gap_days)
    if batch in lake.names(folder):
        plan: Plan = json.loads(lake.read_json(folder, batch))
    else:
        plan = _new_plan(source, head, until)
        lake.write_json(json.dumps(plan, indent=2), folder, batch)
        head.pending = batch
        _write_head(lake, folder, head)
    crash_point("ingest.planned")
    raw = landed_raw(lake, batch) or _extract_raw(lake, source, batch, plan, until, head)
    crash_point("ingest.landed")
    if head.pending == batch:
        _fold(lake, source, head, batch, plan, raw, gap_days)
    return plan, raw


def landed_raw(lake: Lake, batch: str) -> dict[str, pd.DataFrame] | None:
    """The batch's landed raw tables, when a first run wrote them all.

    A re-run converts these instead of asking the source again, so it is identical even after
    mutable rows (reading progress, unsubscriptions) have changed in the app since.
    """
    if not all(lake.has_batch(tables.raw(name), batch) for name in RAW_TABLES):
        return None
    log.info("batch %s was extracted before: converting its landed raw tables again", batch)
    return {name: lake.read_batch(tables.raw(name), batch) for name in RAW_TABLES}


def read_head(lake: Lake, folder: str) -> Head:
    """The head manifest; a lake written before gaps and ledgers has only the highs."""
    if HEAD not in lake.names(folder):
        return Head()
    stored = json.loads(lake.read_json(folder, HEAD))
    if "high" not in stored:
        return Head(high=stored)
    return Head(**stored)


def completeness(lake: Lake, source: Source, plan: Plan, batch: str) -> dict[str, Completeness]:
    """Per table, the app's rows up to the head against the rows extracted by some batch.

    Rows committed while the batch ran show as missing here and are read by the next batch.
    """
    if not isinstance(source, LooksUpRows):
        return {}
    folder = _folder(source)
    head = read_head(lake, folder)
    if head.pending is not None:
        return {}
    found: dict[str, Completeness] = {}
    by_name = {table.name: table for table in INCREMENTAL_TABLES}
    high = head.high.get(INTERACTIONS)
    if high is not None and INTERACTIONS in head.taken:
        table = by_name[INTERACTIONS]
        app_rows = source.count_rows(table, high)
        committed = source.read_ids(table, head.open_gaps) if head.open_gaps else pd.DataFrame()
        late = committed["id"].tolist() if "id" in committed else []
        found[INTERACTIONS] = Completeness(
            app_rows,
            head.taken[INTERACTIONS],
            late[:SHOWN_IDS],
            app_rows - head.taken[INTERACTIONS],
        )
    high = head.high.get(PROGRESS)
    if high is not None:
        table = by_name[PROGRESS]
        versions = source.versions(table, high)
        differ = _not_in_ledger(versions, read_ledger(lake, source, head), table)
        keys = [
            ":".join(map(str, key))
            for key in differ[list(table.key)].head(SHOWN_IDS).itertuples(index=False)
        ]
        found[PROGRESS] = Completeness(
            len(versions), len(versions) - len(differ), keys[:SHOWN_IDS], len(differ)
        )
    for name, result in found.items():
        if result.missing_rows:
            log.warning(
                "batch %s: %d %s rows in the app up to the head were not extracted yet (%s); "
                "the next batch reads them",
                batch,
                result.missing_rows,
                name,
                ", ".join(result.missing) or "rows that were deleted or changed meanwhile",
            )
    return found


def completeness_json(found: dict[str, Completeness]) -> dict[str, dict[str, Any]]:
    return {name: asdict(result) for name, result in found.items()}


# --- planning and settling ---


def _folder(source: Source) -> str:
    return f"{tables.WATERMARKS}/{source.name}"


def _ledger_table(source: Source) -> tables.Table:
    return tables.Table(f"{tables.LEDGERS}/{source.name}/{PROGRESS}")


def _new_plan(source: Source, head: Head, until: datetime) -> Plan:
    """A new batch starts at the head: batches planned out of order read nothing twice."""
    plan: Plan = {}
    for table in INCREMENTAL_TABLES:
        low = head.high.get(table.name)
        high = source.high_watermark(table, until)
        reached = high is not None and (low is None or _after(high, low))
        marks: dict[str, Any] = {"low": low, "high": high if reached else low}
        if isinstance(source, LooksUpRows) and table.name == INTERACTIONS:
            marks["recheck"] = head.open_gaps
        if isinstance(source, LooksUpRows) and table.name == PROGRESS:
            marks["sweep"] = low is not None
        plan[table.name] = marks
    return plan


def _settle(lake: Lake, source: Source, head: Head, gap_days: float) -> Head:
    """Finish what a dead batch left: fold in its landed rows, or adopt its range."""
    folder, dead = _folder(source), str(head.pending)
    plan: Plan = json.loads(lake.read_json(folder, dead))
    raw = landed_raw(lake, dead)
    if raw is not None:
        log.warning("batch %s died after landing its rows: folding them into the head", dead)
        _fold(lake, source, head, dead, plan, raw, gap_days)
        return head
    log.warning("batch %s died before landing its rows: the next batch reads its range", dead)
    emptied = {
        name: {"low": marks["low"], "high": marks["low"], "adopted": True}
        for name, marks in plan.items()
    }
    lake.write_json(json.dumps(emptied, indent=2), folder, dead)
    head.pending = None
    _write_head(lake, folder, head)
    return head


def _fold(
    lake: Lake,
    source: Source,
    head: Head,
    batch: str,
    plan: Plan,
    raw: dict[str, pd.DataFrame],
    gap_days: float,
) -> None:
    """Move the head past a batch whose raw rows are landed: highs, gaps, counts, ledger."""
    for name, marks in plan.items():
        high = marks["high"]
        if high is not None and (name not in head.high or _after(high, head.high[name])):
            head.high[name] = high
        head.taken[name] = head.taken.get(name, 0) + len(raw[name])
    if isinstance(source, LooksUpRows):
        head.gaps = _gaps(head.gaps, plan[INTERACTIONS], raw[INTERACTIONS], batch, gap_days)
        stale = head.ledger
        ledger = _updated_ledger(read_ledger(lake, source, head), raw[PROGRESS])
        lake.write_batch(ledger, _ledger_table(source), batch)
        head.ledger = batch
    head.by, head.pending = batch, None
    _write_head(lake, _folder(source), head)
    if isinstance(source, LooksUpRows) and stale not in (None, batch):
        lake.remove(_ledger_table(source).path, {"batch": str(stale)})


def _write_head(lake: Lake, folder: str, head: Head) -> None:
    lake.write_json(json.dumps(asdict(head), indent=2), folder, HEAD)


def _gaps(
    gaps: dict[str, Runs],
    marks: dict[str, Any],
    raw: pd.DataFrame,
    batch: str,
    gap_days: float,
) -> dict[str, Runs]:
    """Open gaps after a batch: the re-read ids and the range's ids it did not find, aged."""
    ids = raw["id"] if "id" in raw else pd.Series(dtype="string")
    read = pd.to_numeric(ids, errors="coerce").dropna().astype("int64").to_numpy()
    kept = {seen: np.setdiff1d(expand(gap), read) for seen, gap in gaps.items()}
    low, high = marks["low"], marks["high"]
    if high is not None and high != low and not marks.get("adopted"):
        start = int(low) + 1 if low is not None else FIRST_ID
        missed = np.setdiff1d(np.arange(start, int(high) + 1), read)
        kept[batch] = np.union1d(kept.get(batch, missed[:0]), missed)
    oldest = batch_end(batch) - timedelta(days=gap_days)
    for seen in [seen for seen in kept if batch_end(seen) < oldest]:
        expired = kept.pop(seen)
        if expired.size:
            log.warning(
                "%d interaction ids missing since batch %s never committed in %s days: counted as "
                "rolled back (%s)",
                expired.size,
                seen,
                gap_days,
                ", ".join(map(str, expired[:SHOWN_IDS].tolist())),
            )
    return {seen: runs(missing) for seen, missing in kept.items() if missing.size}


def runs(ids: np.ndarray) -> Runs:
    """Sorted unique ids as inclusive [first, last] runs of consecutive ids."""
    ids = np.unique(ids.astype("int64"))
    if not ids.size:
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1)
    firsts = np.concatenate([ids[:1], ids[breaks + 1]])
    lasts = np.concatenate([ids[breaks], ids[-1:]])
    return [[int(a), int(b)] for a, b in zip(firsts, lasts, strict=True)]


def expand(gap: Runs) -> np.ndarray:
    """The ids of inclusive runs."""
    parts = [np.arange(first, last + 1, dtype="int64") for first, last in gap]
    return np.concatenate(parts) if parts else np.array([], dtype="int64")


def read_ledger(lake: Lake, source: Source, head: Head) -> pd.DataFrame:
    """Version taken per reading-progress key (strings, as extracted); empty before any."""
    table = next(t for t in INCREMENTAL_TABLES if t.name == PROGRESS)
    columns = [*table.key, table.column]
    if head.ledger is None:
        return pd.DataFrame({name: pd.Series(dtype="string") for name in columns})
    return lake.read_batch(_ledger_table(source), head.ledger).astype("string")


def _updated_ledger(ledger: pd.DataFrame, taken: pd.DataFrame) -> pd.DataFrame:
    """The ledger with the versions just taken replacing those of the same keys."""
    if taken.empty:
        return ledger
    table = next(t for t in INCREMENTAL_TABLES if t.name == PROGRESS)
    columns = [*table.key, table.column]
    both = pd.concat([ledger, taken[columns].astype("string")], ignore_index=True)
    return both.drop_duplicates(subset=list(table.key), keep="last", ignore_index=True)


def _not_in_ledger(
    versions: pd.DataFrame, ledger: pd.DataFrame, table: IncrementalTable
) -> pd.DataFrame:
    """Rows of `versions` whose (key, version) the ledger does not hold."""
    columns = [*table.key, table.column]
    merged = (
        versions[columns]
        .astype("string")
        .merge(ledger[columns], on=columns, how="left", indicator=True)
    )
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge")


def _after(value: Watermark, than: Watermark) -> bool:
    """Ids compare as numbers, timestamps and file names as their (ISO, sortable) text."""
    if isinstance(value, int) and isinstance(than, int):
        return value > than
    return str(value) > str(than)


# --- reading ---


def _extract_raw(
    lake: Lake,
    source: Source,
    batch: str,
    plan: Plan,
    interval_end: datetime,
    head: Head,
) -> dict[str, pd.DataFrame]:
    """Read the batch from the source and land it untouched under `raw/<table>/batch=<key>/`."""
    raw = {t.name: _read(lake, source, t, plan[t.name], head) for t in INCREMENTAL_TABLES}
    raw.update({name: source.read_snapshot(name, interval_end) for name in SNAPSHOT_TABLES})
    for name, frame in raw.items():
        lake.write_batch(frame, tables.raw(name), batch)
    return raw


def _read(
    lake: Lake, source: Source, table: IncrementalTable, marks: dict[str, Any], head: Head
) -> pd.DataFrame:
    """The range (low, high], plus the gap ids to re-read or the swept rows that differ."""
    low, high = marks["low"], marks["high"]
    parts = [] if high is None or high == low else [source.read_increment(table, low, high)]
    if isinstance(source, LooksUpRows) and marks.get("recheck"):
        parts.append(source.read_ids(table, marks["recheck"]))
    if isinstance(source, LooksUpRows) and marks.get("sweep") and low is not None:
        parts.append(_swept(lake, source, table, low, head))
    # the parts are disjoint (above low, gap ids below it, swept versions at or below it), so a
    # duplicate here is the source's own (an exporter's retry) and goes on to quarantine
    parts = [part for part in parts if not part.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _swept(
    lake: Lake, source: LooksUpRows, table: IncrementalTable, low: Watermark, head: Head
) -> pd.DataFrame:
    """Rows at or below `low` whose version the ledger does not hold: late or backdated."""
    differ = _not_in_ledger(source.versions(table, low), read_ledger(lake, source, head), table)
    if differ.empty:
        return pd.DataFrame()
    rows = source.read_keys(table, differ[list(table.key)])
    stamps = pd.to_datetime(rows[table.column], errors="coerce", format="ISO8601")
    # a version above `low` is the increment's; one that does not parse goes on to quarantine
    rows = rows[~(stamps > pd.Timestamp(low)).to_numpy()].reset_index(drop=True)
    log.warning(
        "%d %s rows at or below the watermark %s were not read before (committed late or "
        "backdated): reading them now",
        len(rows),
        table.name,
        low,
    )
    return rows
