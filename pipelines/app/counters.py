"""The INBO app's per-item counters in Redis: what it counts, how it counts, how to read them back.

The app keeps one hash per item, `<INBO_APP_REDIS_PREFIX>:ItemFeature:<item_id>`, and increments it
with `HINCRBY` as it records each row, keyed by the row's issue id as recorded (bad rows included):

| field | +1 for every |
|---|---|
| `impressions` | `experience_interactions` row of kind `impression` |
| `clicks` | row of kind `click` |
| `saves` | row of kind `bookmark` |
| `reads` | `reading_progress` row the app creates: a user opening the issue for the first time |

Later progress updates that user's row, not the counter, so `reads` counts distinct readers: the
warehouse gets the same number as distinct (user, item) pairs of `read` events. Other kinds (opens,
shares, hides, subscriptions, unknown kinds) touch no counter. A field the app never incremented is
absent from the hash, and an item nothing was counted for has no hash at all.

`redis` is only imported for type checking: the simulator and the CLI import this module cheaply.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from inbo.services import redis_connection
from inbo.settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

FIELDS: tuple[str, ...] = ("impressions", "clicks", "reads", "saves")
KIND_FIELDS: dict[str, str] = {"impression": "impressions", "click": "clicks", "bookmark": "saves"}
"""Which counter each app interaction kind increments; `reads` comes from `reading_progress`."""
READS = "reads"
DRIFT_TRUTH = "item_counter_drift.parquet"
"""Where the simulator records the drift it injected, under its truth folder."""


@dataclass(frozen=True)
class CounterStore:
    """The app's counters: a Redis client (`decode_responses=True`) and the app's key prefix."""

    client: redis.Redis
    prefix: str
    batch_size: int = 2000

    def key(self, item_id: int) -> str:
        return f"{self.prefix}:ItemFeature:{item_id}"

    def item_of(self, key: str) -> int | None:
        """The item id a counter key names; None for a key that is not `<prefix>:ItemFeature:<int>`."""
        suffix = key.removeprefix(f"{self.prefix}:ItemFeature:")
        return int(suffix) if suffix != key and suffix.lstrip("-").isdigit() else None

    def keys(self) -> list[str]:
        """Every counter key, found with SCAN so a big keyspace never blocks the server."""
        pattern = f"{self.prefix}:ItemFeature:*"
        found = self.client.scan_iter(match=pattern, count=self.batch_size)
        return sorted({key for key in found if self.item_of(key) is not None})

    def read(self, item_ids: list[int] | None = None) -> pd.DataFrame:
        """Counters of `item_ids` (default: every item with a hash), pipelined HMGET in batches.

        One row per item, one nullable Int64 column per field: NA where the field is absent.
        """
        keys = self.keys() if item_ids is None else [self.key(i) for i in item_ids]
        values: list[list[str | None]] = []
        for start in range(0, len(keys), self.batch_size):
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys[start : start + self.batch_size]:
                    pipe.hmget(key, list(FIELDS))
                values.extend(pipe.execute())
        ids = [self.item_of(key) for key in keys]
        frame = pd.DataFrame(values, columns=list(FIELDS), index=pd.Index(ids, name="item_id"))
        return frame.apply(pd.to_numeric).astype("Int64")

    def increment(self, counts: pd.DataFrame) -> int:
        """Add `counts` (item_id index x field columns) as the app does, one HINCRBY per nonzero cell."""
        cells = counts.stack()
        cells = cells[cells != 0]
        for start in range(0, len(cells), self.batch_size):
            with self.client.pipeline(transaction=False) as pipe:
                for (item_id, name), amount in cells.iloc[start : start + self.batch_size].items():
                    pipe.hincrby(self.key(int(item_id)), str(name), int(amount))
                pipe.execute()
        return len(cells)

    def clear(self) -> int:
        """Delete every counter hash under the prefix (the simulator replaces the app's world)."""
        keys = self.keys()
        for start in range(0, len(keys), self.batch_size):
            self.client.unlink(*keys[start : start + self.batch_size])
        return len(keys)


@contextmanager
def open_counters(settings: Settings) -> Iterator[CounterStore]:
    """The app's counter store: `INBO_APP_REDIS_URL`, or the platform's Redis when that is empty."""
    target = settings
    if settings.app_redis_url:
        target = settings.model_copy(update={"redis_url": settings.app_redis_url})
    with redis_connection(target) as client:
        yield CounterStore(client, settings.app_redis_prefix)


def interaction_counts(issue_ids: np.ndarray, kinds: np.ndarray) -> pd.DataFrame:
    """What the app adds to its counters for these interaction rows: items x `FIELDS`."""
    fields = pd.Series(kinds, dtype=object).map(KIND_FIELDS)
    counted = fields.notna().to_numpy()
    return counts_table(np.asarray(issue_ids)[counted], fields[counted].to_numpy())


def read_counts(issue_ids: np.ndarray) -> pd.DataFrame:
    """What the app adds to `reads` for these newly created reading-progress rows."""
    return counts_table(issue_ids, np.full(len(issue_ids), READS, dtype=object))


def counts_table(item_ids: np.ndarray, fields: np.ndarray) -> pd.DataFrame:
    """How often each (item, field) occurs, as an int64 table of items x `FIELDS`."""
    pairs = pd.DataFrame({"item_id": np.asarray(item_ids, dtype=np.int64), "field": fields})
    sizes = pairs.groupby(["item_id", "field"]).size()
    table = sizes.unstack(fill_value=0) if len(sizes) else pd.DataFrame(index=sizes.index)
    table = table.reindex(columns=list(FIELDS), fill_value=0).astype("int64")
    table.index = table.index.astype("int64").rename("item_id")
    table.columns.name = None
    return table


@dataclass
class SimulatedApp:
    """The app's counter writes as the simulator plays them, with the drift real counters show.

    Each increment is lost (a timed-out write the client gave up on) with probability
    `drift / 2`, or applied twice (a retried write that had in fact succeeded) with probability
    `drift / 2`, from a random stream of its own. What the app should have counted and what it
    wrote are both kept, so the drift can be recorded exactly.
    """

    store: CounterStore
    rng: np.random.Generator
    drift: float
    exact: list[pd.DataFrame] = field(default_factory=list)
    written: list[pd.DataFrame] = field(default_factory=list)

    @classmethod
    def replacing(cls, store: CounterStore, rng: np.random.Generator, drift: float) -> SimulatedApp:
        """Start from no counters, as the simulator starts from an empty app database."""
        removed = store.clear()
        log.debug("removed %d counter hashes under %s", removed, store.prefix)
        return cls(store, rng, drift)

    def record(self, counts: pd.DataFrame) -> None:
        """Write one batch of the app's increments to Redis, drifted."""
        exact = counts.to_numpy()
        lost = self.rng.binomial(exact, self.drift / 2)
        doubled = self.rng.binomial(exact - lost, self.drift / 2)
        written = pd.DataFrame(exact - lost + doubled, index=counts.index, columns=counts.columns)
        self.store.increment(written)
        self.exact.append(counts)
        self.written.append(written)

    def write_truth(self, truth_dir: Path) -> pd.DataFrame:
        """Record every (item, field) whose counter differs from what the app recorded."""
        exact = _summed(self.exact)
        written = _summed(self.written)
        cells = pd.DataFrame({"expected": exact.stack(), "counted": written.stack()})
        drifted = cells[cells["expected"] != cells["counted"]].rename_axis(["item_id", "field"])
        truth = drifted.reset_index()
        truth_dir.mkdir(parents=True, exist_ok=True)
        truth.to_parquet(truth_dir / DRIFT_TRUTH, index=False)
        log.debug("counter drift on %d items", truth["item_id"].nunique())
        return truth


def _summed(tables: list[pd.DataFrame]) -> pd.DataFrame:
    if not tables:
        return counts_table(np.array([], dtype=np.int64), np.array([], dtype=object))
    return pd.concat(tables).groupby(level="item_id").sum().astype("int64")
