"""Extract: which rows of the app's tables a batch reads, so that every row is read exactly once.

The first run of a batch records, per incremental table, the range (low, high] it read in a
manifest under `_state/watermarks/<source>/<batch>.json`; a re-run of the batch converts the raw
rows it landed then, so its output is identical, and the next batch starts where the newest one
ended (the head), so a late row is read by whichever batch first sees it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

import pandas as pd

from inbo import tables
from inbo.lake import Lake
from pipelines.app.sources import (
    INCREMENTAL_TABLES,
    SNAPSHOT_TABLES,
    IncrementalTable,
    Source,
    Watermark,
)

log = logging.getLogger(__name__)

HEAD = "_head"
"""Name of the manifest holding the highest watermark per table reached by any batch."""


def plan_watermarks(
    lake: Lake, source: Source, batch: str, until: datetime
) -> dict[str, dict[str, Watermark | None]]:
    """This batch's (low, high] per incremental table: recorded on first run, reused on re-runs.

    A new batch starts at the highest watermark any batch reached (the head), not at the
    previous batch key's: batches planned out of order (a nightly after a later hourly, a manual
    run over an older interval) then read nothing twice, and their range may be empty.
    """
    folder = f"{tables.WATERMARKS}/{source.name}"
    head = _watermark_head(lake, folder)
    if batch in lake.names(folder):
        plan: dict[str, dict[str, Watermark | None]] = json.loads(lake.read_json(folder, batch))
    else:
        plan = {}
        for table in INCREMENTAL_TABLES:
            low = head.get(table.name)
            high = source.high_watermark(table, until)
            reached = high is not None and (low is None or _after(high, low))
            plan[table.name] = {"low": low, "high": high if reached else low}
        lake.write_json(json.dumps(plan, indent=2), folder, batch)
    _advance_head(lake, folder, head, plan)
    return plan


def _advance_head(
    lake: Lake,
    folder: str,
    head: dict[str, Watermark],
    plan: dict[str, dict[str, Watermark | None]],
) -> None:
    """Move the head up to the plan's highs; also on a re-run, in case a run died in between."""
    moved = {
        name: marks["high"]
        for name, marks in plan.items()
        if marks["high"] is not None and (name not in head or _after(marks["high"], head[name]))
    }
    if moved:
        lake.write_json(json.dumps({**head, **moved}, indent=2), folder, HEAD)


def _watermark_head(lake: Lake, folder: str) -> dict[str, Watermark]:
    """The highest watermark per table over every batch planned so far."""
    planned = lake.names(folder)
    if HEAD in planned:
        head: dict[str, Watermark] = json.loads(lake.read_json(folder, HEAD))
        return head
    found: dict[str, Watermark] = {}
    for name in planned:
        plan = json.loads(lake.read_json(folder, name))
        for name, marks in plan.items():
            high = marks.get("high")
            if high is not None and (name not in found or _after(high, found[name])):
                found[name] = high
    return found


def _after(value: Watermark, than: Watermark) -> bool:
    """Ids compare as numbers, timestamps and file names as their (ISO, sortable) text."""
    if isinstance(value, int) and isinstance(than, int):
        return value > than
    return str(value) > str(than)


RAW_TABLES = tuple(t.name for t in INCREMENTAL_TABLES) + tuple(SNAPSHOT_TABLES)


def extract_raw(
    lake: Lake,
    source: Source,
    batch: str,
    plan: dict[str, dict[str, Watermark | None]],
    interval_end: datetime,
) -> dict[str, pd.DataFrame]:
    """Read the batch from the source and land it untouched under `raw/<table>/batch=<key>/`."""
    raw = {t.name: _extract(source, t, plan[t.name]) for t in INCREMENTAL_TABLES}
    raw.update({name: source.read_snapshot(name, interval_end) for name in SNAPSHOT_TABLES})
    for name, frame in raw.items():
        lake.write_batch(frame, tables.raw(name), batch)
    return raw


def landed_raw(lake: Lake, batch: str) -> dict[str, pd.DataFrame] | None:
    """The batch's landed raw tables, when a first run wrote them all.

    A re-run converts these instead of asking the source again, so it is identical even after
    mutable rows (reading progress, unsubscriptions) have changed in the app since.
    """
    if not all(lake.has_batch(tables.raw(name), batch) for name in RAW_TABLES):
        return None
    log.info("batch %s was extracted before: converting its landed raw tables again", batch)
    return {name: lake.read_batch(tables.raw(name), batch) for name in RAW_TABLES}


def _extract(
    source: Source, table: IncrementalTable, marks: dict[str, Watermark | None]
) -> pd.DataFrame:
    high = marks["high"]
    if high is None or high == marks["low"]:
        return pd.DataFrame()
    return source.read_increment(table, marks["low"], high)
