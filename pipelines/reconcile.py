"""Reconcile the app's per-item counters in Redis with the warehouse; repair and restore them.

The counters (`pipelines.app.counters`) are cumulative and live: they hold everything the app has
recorded up to the moment they are read, bad rows included. So the warehouse side is not a window
of events but the same "everything so far", counted with the app's rules:

1. the validated `user_events` of every batch ingested from the app database and validated;
2. the rows those batches quarantined, at ingest or at validation: the app counted them when it
   recorded them. They count by their item id and kind as recorded; a row whose item id is not an
   integer cannot be attributed to a counter and is reported as `unattributed`;
3. the app database's rows no validated batch holds yet, read from the app database itself: those
   above the highest ingest watermark, and those in the range of a batch planned but not
   validated yet (see `_state/watermarks` in `pipelines.ingest`).

`impressions`, `clicks` and `saves` count distinct event ids, `reads` distinct (user, item) pairs.
A world whose counters are right reconciles to 0 inconsistent items whatever its quarantine and
however far ingest lags; each drifted item counts once, whatever its fields and amounts.
`interval_end` names the run (the report `_reports/reconcile/<batch>.json`) and its batch must be
validated first; the figures are those of the moment the check runs.

On a live app, a row recorded between the check's read of the app database and its read of Redis
is in one and not the other: a hot item can show a difference of one that the next run no longer
sees. That is why the hourly DAG only reports and repair is a deliberate act.

Repair backs up the current values of every drifted item's counters to
`_backups/item_counters/<backup>.parquet` before writing, then rewrites each item in a Redis
transaction only if its counters still hold the values read by the check (WATCH), so an increment
made meanwhile is never overwritten: that item is left for the next run. Re-running is safe: a
repaired item reconciles and is not touched again. `restore_counters(backup)` writes the backed-up
values back exactly, absent fields included.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from inbo import app_schema, tables
from inbo.app_schema import KIND_TO_EVENT_TYPE
from inbo.errors import DataNotFound, ServiceUnavailable
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from pipelines.app.counters import (
    FIELDS,
    KIND_FIELDS,
    READS,
    CounterStore,
    counts_table,
    open_counters,
)
from pipelines.app.sources import Watermark
from pipelines.extract import INTERACTIONS, read_head
from pipelines.validate import HELD
from pipelines.validate import read_report as read_validation

if TYPE_CHECKING:
    import redis
    from redis.typing import EncodableT, FieldT

log = logging.getLogger(__name__)

WORST_N = 10
WATCH_RETRIES = 5
EVENT_FIELDS: dict[str, str] = {KIND_TO_EVENT_TYPE[k]: f for k, f in KIND_FIELDS.items()} | {
    "read": READS
}
"""The canonical event types that stand for a counted app row, and the counter they feed."""
EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type"]
Range = tuple[Watermark | None, Watermark | None]
"""A watermark range (low, high]; None: unbounded on that side."""


@dataclass
class ReconcileReport:
    """The figures of one check, and what repair did when asked to."""

    batch: str
    items_checked: int
    inconsistent_items: int
    inconsistency_rate: float
    target: float
    counted: dict[str, int]
    missing: dict[str, int]
    extra: dict[str, int]
    worst: list[dict[str, Any]]
    repaired: int = 0
    changed_during_repair: int = 0
    backup: str | None = None
    path: str = ""
    seconds: float = 0.0

    @property
    def within_target(self) -> bool:
        return self.inconsistency_rate <= self.target

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "within_target": self.within_target}, indent=2)


def reconcile_counters(
    interval_end: datetime, *, repair: bool = False, settings: Settings | None = None
) -> ReconcileReport:
    """Compare every item's app counters with the warehouse; with `repair`, rewrite drifted ones."""
    started = time.monotonic()
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    validated, pending = _coverage(lake, batch)
    units, counted = _counted_units(lake, validated, pending, settings.app_db)
    expected = counts_table(units["item_id"].to_numpy(), units["field"].to_numpy())
    with open_counters(settings) as store:
        current = store.read().dropna(how="all")
        items = expected.index.union(current.index)
        app = current.reindex(items).fillna(0).astype("int64")
        warehouse = expected.reindex(items, fill_value=0)
        drifted = items[(app != warehouse).any(axis=1).to_numpy()]
        report = _report(batch, app, warehouse, drifted, counted, settings.reconcile_target)
        if repair and len(drifted):
            _repair(store, lake, report, current.reindex(drifted), warehouse.loc[drifted])
    report.seconds = round(time.monotonic() - started, 3)
    report.path = f"{lake.path(tables.RECONCILE_REPORTS)}/{batch}.json"
    lake.write_json(report.to_json(), tables.RECONCILE_REPORTS, batch)
    _log(report)
    return report


def latest_report(settings: Settings) -> ReconcileReport | None:
    """The newest check's report, None before any."""
    lake = Lake(settings.lake)
    batches = sorted(lake.names(tables.RECONCILE_REPORTS))
    if not batches:
        return None
    raw = json.loads(lake.read_json(tables.RECONCILE_REPORTS, batches[-1]))
    raw.pop("within_target", None)
    return ReconcileReport(**raw)


def restore_counters(backup: str, settings: Settings | None = None) -> int:
    """Write the counters a repair backed up back exactly; returns how many items were restored."""
    settings = settings or get_settings()
    saved = Lake(settings.lake).read(tables.COUNTER_BACKUPS.path, name=backup).set_index("item_id")
    with open_counters(settings) as store:
        for start in range(0, len(saved), store.batch_size):
            with store.client.pipeline(transaction=True) as pipe:
                for item_id, values in saved.iloc[start : start + store.batch_size].iterrows():
                    _queue_write(pipe, store.key(int(item_id)), _values(values))
                pipe.execute()
    log.info("restored the counters of %d items from backup %s", len(saved), backup)
    return len(saved)


# --- what the warehouse says the counters should hold ---


def _coverage(lake: Lake, batch: str) -> tuple[set[str], dict[str, list[Range]]]:
    """Validated app-database batches, and per app table the watermark ranges the lake lacks."""
    plans = _manifests(lake)
    reported = set(lake.names(tables.VALIDATE_REPORTS))
    if batch not in plans or batch not in reported:
        raise DataNotFound(
            f"batch {batch} was not ingested from the app database and validated: run "
            "`inbo ingest` and `inbo validate` for it first"
        )
    # a held batch's rows are not in the lake yet: the app's rows of its range are pending
    validated = {key for key in reported if read_validation(lake, key).status != HELD}
    pending: dict[str, list[Range]] = {}
    for table in {name for plan in plans.values() for name in plan}:
        marks = {key: plan[table] for key, plan in plans.items() if table in plan}
        highs = [m["high"] for m in marks.values() if m["high"] is not None]
        unvalidated = [
            (m["low"], m["high"])
            for key, m in marks.items()
            if key not in validated and m["high"] not in (None, m["low"])
        ]
        pending[table] = [(max(highs, key=_order, default=None), None), *unvalidated]
    gaps = read_head(lake, f"{tables.WATERMARKS}/appdb").open_gaps
    pending.setdefault(INTERACTIONS, []).extend((first - 1, last) for first, last in gaps)
    return validated & set(plans), pending


def _manifests(lake: Lake) -> dict[str, dict[str, dict[str, Watermark | None]]]:
    """Each app-database batch's watermark plan, by batch key."""
    folder = f"{tables.WATERMARKS}/appdb"
    return {
        name: json.loads(lake.read_json(folder, name))
        for name in lake.names(folder)
        if not name.startswith("_")
    }


def _stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _order(mark: Watermark) -> tuple[int, str]:
    """Ids compare as numbers, timestamps as their ISO text."""
    return (mark, "") if isinstance(mark, int) else (0, str(mark))


def _counted_units(
    lake: Lake, validated: set[str], pending: dict[str, list[Range]], app_db: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per (item, field, unit) the app counted: event ids, or readers for `reads`."""
    events = _lake_frames(
        lake, validated, tables.USER_EVENTS.path, "date=*/*.parquet", EVENT_COLUMNS
    )
    quarantined = {
        table: _lake_frames(lake, validated, tables.QUARANTINE_ROOT, f"{table}/batch=*/*.parquet")
        for table in ("experience_interactions", "reading_progress", "user_events")
    }
    interactions, progress = _pending_rows(app_db, pending)
    sources = {
        "validated": [_canonical_units(events)],
        "quarantined": [
            _interaction_units(quarantined["experience_interactions"]),
            _progress_units(quarantined["reading_progress"]),
            _canonical_units(quarantined["user_events"]),
        ],
        "pending": [_interaction_units(interactions), _progress_units(progress)],
    }
    counted: dict[str, int] = {}
    frames = []
    for name, parts in sources.items():
        frame = pd.concat(parts, ignore_index=True)
        counted[name] = len(frame)
        frames.append(frame)
    units = pd.concat(frames, ignore_index=True)
    item = pd.to_numeric(units["item_id"], errors="coerce")
    attributed = item.notna() & (item == np.floor(item.fillna(0)))
    counted["unattributed"] = int((~attributed).sum())
    units = units[attributed].assign(item_id=item[attributed].astype("int64"))
    return units.drop_duplicates(ignore_index=True), counted


def _lake_frames(
    lake: Lake, batches: set[str], table: str, pattern: str, columns: list[str] | None = None
) -> pd.DataFrame:
    """Rows of the files of `table` matching `pattern` that belong to one of `batches`."""
    frames = []
    for path in lake.files(table, pattern):
        if _batch_of(path) in batches:
            with lake.fs.open(path, "rb") as handle:
                frames.append(pq.read_table(handle, columns=columns).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _batch_of(path: str) -> str:
    """`.../batch=<key>/<stage>.parquet` (quarantine) or `.../date=<day>/<key>.parquet` (events)."""
    folder = path.rsplit("/", 2)[-2]
    return folder.removeprefix("batch=") if folder.startswith("batch=") else _stem(path)


def _pending_rows(app_db: str, pending: dict[str, list[Range]]) -> tuple[pd.DataFrame, ...]:
    """App rows no validated batch holds: interactions (by id), reading progress (updated_at)."""
    from sqlalchemy import and_, or_, select, true
    from sqlalchemy.exc import OperationalError

    from pipelines.app.database import app_engine

    def within(column: Any, ranges: list[Range], bound: Any) -> Any:
        return or_(
            *(
                and_(
                    column > bound(low) if low is not None else true(),
                    column <= bound(high) if high is not None else true(),
                )
                for low, high in ranges
            )
        )

    def stamp(mark: Watermark) -> datetime:
        return pd.Timestamp(mark).to_pydatetime()

    rows, reads = app_schema.experience_interactions, app_schema.reading_progress
    queries = (
        select(rows.c.id, rows.c.user_id, rows.c.issue_id, rows.c.kind).where(
            within(rows.c.id, pending.get(rows.name, [(None, None)]), int)
        ),
        select(reads.c.user_id, reads.c.issue_id).where(
            within(reads.c.updated_at, pending.get(reads.name, [(None, None)]), stamp)
        ),
    )
    engine = app_engine(app_db)
    try:
        with engine.connect() as conn:
            return tuple(pd.read_sql(query, conn).astype("string") for query in queries)
    except OperationalError as exc:
        raise ServiceUnavailable(f"app database unreachable: {exc.orig}") from None
    finally:
        engine.dispose()


def _units(item_id: pd.Series, fields: pd.Series, unit: pd.Series) -> pd.DataFrame:
    frame = pd.DataFrame({"item_id": item_id, "field": fields, "unit": unit.astype("string")})
    return frame.dropna(subset=["field"]).reset_index(drop=True)


def _canonical_units(events: pd.DataFrame) -> pd.DataFrame:
    """Canonical events (validated, or quarantined by validation) as counted units."""
    if events.empty:
        return _units(pd.Series(), pd.Series(), pd.Series())
    fields = events["event_type"].map(EVENT_FIELDS)
    reader = "u" + events["user_id"].astype("string")
    return _units(events["item_id"], fields, reader.where(fields == READS, events["event_id"]))


def _interaction_units(rows: pd.DataFrame) -> pd.DataFrame:
    """Raw app interaction rows (quarantined at ingest, or not ingested yet) as counted units."""
    if rows.empty:
        return _units(pd.Series(), pd.Series(), pd.Series())
    return _units(rows["issue_id"], rows["kind"].map(KIND_FIELDS), "ei-" + rows["id"])


def _progress_units(rows: pd.DataFrame) -> pd.DataFrame:
    """Raw reading-progress rows as `reads` units: one per reader."""
    if rows.empty:
        return _units(pd.Series(), pd.Series(), pd.Series())
    return _units(rows["issue_id"], pd.Series(READS, index=rows.index), "u" + rows["user_id"])


# --- the report ---


def _report(
    batch: str,
    app: pd.DataFrame,
    warehouse: pd.DataFrame,
    drifted: pd.Index,
    counted: dict[str, int],
    target: float,
) -> ReconcileReport:
    difference = app - warehouse
    size = difference.abs().sum(axis=1).loc[drifted]
    worst = size.sort_values(ascending=False, kind="stable").index[:WORST_N]
    return ReconcileReport(
        batch=batch,
        items_checked=len(app),
        inconsistent_items=len(drifted),
        inconsistency_rate=len(drifted) / len(app) if len(app) else 0.0,
        target=target,
        counted=counted,
        missing={f: int(-difference[f].clip(upper=0).sum()) for f in FIELDS},
        extra={f: int(difference[f].clip(lower=0).sum()) for f in FIELDS},
        worst=[
            {
                "item_id": int(item),
                "difference": int(size[item]),
                "counter": {f: int(app.at[item, f]) for f in FIELDS},
                "warehouse": {f: int(warehouse.at[item, f]) for f in FIELDS},
            }
            for item in worst
        ],
    )


def _log(report: ReconcileReport) -> None:
    log.info(
        "reconciled %d items' counters in %.1f s: %d inconsistent (%.2f%%)%s",
        report.items_checked,
        report.seconds,
        report.inconsistent_items,
        100 * report.inconsistency_rate,
        f", {report.repaired} repaired (backup {report.backup})" if report.backup else "",
    )
    if not report.within_target and not report.backup:
        log.warning(
            "app counters of %.2f%% of items disagree with the warehouse, above the %.2f%% "
            "target: look at the worst items in %s, then `inbo reconcile --repair`",
            100 * report.inconsistency_rate,
            100 * report.target,
            report.path,
        )


# --- repair ---


def _repair(
    store: CounterStore,
    lake: Lake,
    report: ReconcileReport,
    before: pd.DataFrame,
    warehouse: pd.DataFrame,
) -> None:
    """Back up the drifted items' counters, then rewrite those that did not change meanwhile."""
    backup = f"{report.batch}-{uuid.uuid4().hex[:6]}"
    saved = before.rename_axis("item_id").reset_index()
    lake.write(saved, tables.COUNTER_BACKUPS.path, backup)
    target = warehouse.astype("Int64").where(warehouse != 0)  # the app never writes a 0
    changed = _compare_and_set(store, before, target)
    if changed:
        lake.write(saved[~saved["item_id"].isin(changed)], tables.COUNTER_BACKUPS.path, backup)
    report.backup = backup
    report.repaired = len(before) - len(changed)
    report.changed_during_repair = len(changed)


def _compare_and_set(store: CounterStore, before: pd.DataFrame, after: pd.DataFrame) -> list[int]:
    """Write `after` over each item's counters that still hold `before`; the items that did not."""
    changed: list[int] = []
    items = before.index.tolist()
    for start in range(0, len(items), store.batch_size):
        changed += _compare_and_set_batch(
            store, items[start : start + store.batch_size], before, after
        )
    return changed


def _compare_and_set_batch(
    store: CounterStore, items: list[int], before: pd.DataFrame, after: pd.DataFrame
) -> list[int]:
    import redis

    keys = [store.key(item) for item in items]
    for _ in range(WATCH_RETRIES):
        with store.client.pipeline(transaction=True) as pipe:
            pipe.watch(*keys)
            now = [_parsed(pipe.hmget(key, list(FIELDS))) for key in keys]
            same = [now[i] == _values(before.loc[item]) for i, item in enumerate(items)]
            pipe.multi()
            for key, item, keep in zip(keys, items, same, strict=True):
                if keep:
                    _queue_write(pipe, key, _values(after.loc[item]))
            try:
                pipe.execute()
            except redis.WatchError:
                continue
        return [item for item, keep in zip(items, same, strict=True) if not keep]
    raise ServiceUnavailable(
        f"the app's counters kept changing during {WATCH_RETRIES} repair attempts; try again"
    )


def _values(row: pd.Series) -> tuple[int | None, ...]:
    return tuple(None if pd.isna(row[f]) else int(row[f]) for f in FIELDS)


def _parsed(values: list[Any]) -> tuple[int | None, ...]:
    return tuple(None if value is None else int(value) for value in values)


def _queue_write(pipe: redis.client.Pipeline, key: str, values: tuple[int | None, ...]) -> None:
    """Set the fields that have a value, delete those that have none (as the app never wrote)."""
    present: dict[FieldT, EncodableT] = {
        f: v for f, v in zip(FIELDS, values, strict=True) if v is not None
    }
    absent = [f for f, v in zip(FIELDS, values, strict=True) if v is None]
    if present:
        pipe.hset(key, mapping=present)
    if absent:
        pipe.hdel(key, *absent)
