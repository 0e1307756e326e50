"""The lake: Parquet files under one fsspec URL, partitioned by date and batch, written atomically.

Layout: `<lake>/<table>/<partition>=<value>/.../<name>.parquet`. A batch is one run of the
pipeline, named by the end of its data interval (see `batch_key`); re-running a batch rewrites
the same files, so every step is idempotent for its interval.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inbo.errors import ConfigError, DataNotFound

if TYPE_CHECKING:
    from inbo.tables import Table

log = logging.getLogger(__name__)


BATCH_FORMAT = "%Y%m%dT%H%MZ"


def batch_key(interval_end: datetime) -> str:
    """Name of the batch whose data interval ends at `interval_end` (UTC), e.g. 20261126T0000Z."""
    return interval_end.strftime(BATCH_FORMAT)


def batch_end(batch: str) -> datetime:
    """The interval end a batch key names: the inverse of `batch_key`."""
    return datetime.strptime(batch, BATCH_FORMAT).replace(tzinfo=UTC)


class Lake:
    """Reads and writes Parquet tables under one fsspec root URL."""

    def __init__(self, url: str) -> None:
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except ImportError as exc:  # a known scheme whose driver is not installed, e.g. s3fs
            raise ConfigError(f"INBO_LAKE_URL {url}: {exc} (pip install it next to INBO)") from None
        except ValueError as exc:
            raise ConfigError(f"INBO_LAKE_URL {url} is not a usable fsspec URL: {exc}") from None
        self.url = url

    def path(self, table: str, partition: Mapping[str, str] | None = None, name: str = "") -> str:
        parts = [self.root.rstrip("/"), table]
        parts += [f"{key}={value}" for key, value in (partition or {}).items()]
        if name:
            parts.append(f"{name}.parquet")
        return "/".join(parts)

    def write(
        self,
        frame: pd.DataFrame,
        table: str,
        name: str,
        partition: Mapping[str, str] | None = None,
        schema: pa.Schema | None = None,
    ) -> str:
        """Write `frame` to one file, temp-then-rename so a reader never sees a partial file."""
        final = self.path(table, partition, name)
        directory = final.rsplit("/", 1)[0]
        self.fs.makedirs(directory, exist_ok=True)
        temp = f"{directory}/.tmp-{uuid.uuid4().hex}.parquet"
        arrow = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        with self.fs.open(temp, "wb") as handle:
            pq.write_table(arrow, handle)
        self.fs.mv(temp, final)
        log.debug("wrote %d rows to %s", len(frame), final)
        return final

    def write_partitioned(
        self, frame: pd.DataFrame, table: str, name: str, by: str, schema: pa.Schema
    ) -> list[str]:
        """Write one file `name` per value of the date column `by` (partition `date=YYYY-MM-DD`)."""
        days = pd.to_datetime(frame[by], utc=True).dt.strftime("%Y-%m-%d")
        return [
            self.write(part, table, name, {"date": day}, schema)
            for day, part in frame.groupby(days, sort=True)
        ]

    def exists(
        self, table: str, partition: Mapping[str, str] | None = None, name: str = ""
    ) -> bool:
        return bool(self.fs.exists(self.path(table, partition, name)))

    def names(self, table: str, suffix: str = ".json") -> list[str]:
        """Names (without `suffix`) of the files directly under `table`, sorted, temp files out."""
        return [
            path.rsplit("/", 1)[-1].removesuffix(suffix) for path in self.files(table, f"*{suffix}")
        ]

    def files(self, table: str, pattern: str = "**/*.parquet") -> list[str]:
        """Every data file of `table`, sorted, temp files excluded."""
        found = self.fs.glob(f"{self.path(table)}/{pattern}")
        return sorted(p for p in found if not p.rsplit("/", 1)[-1].startswith(".tmp-"))

    def read(
        self,
        table: str,
        partition: Mapping[str, str] | None = None,
        name: str = "",
        schema: pa.Schema | None = None,
        filters: pc.Expression | None = None,
    ) -> pd.DataFrame:
        """Read one file, or every file under a partition; `DataNotFound` if there is none.

        `filters` keeps only matching rows, applied while reading, so a reader of one user shard
        holds that shard's rows, not the table's.
        """
        if name:
            paths = [self.path(table, partition, name)]
            if not self.fs.exists(paths[0]):
                raise DataNotFound(f"{paths[0]} does not exist")
        else:
            base = self.path(table, partition)
            paths = sorted(p for p in self.fs.glob(f"{base}/**/*.parquet") if "/.tmp-" not in p)
            if not paths:
                raise DataNotFound(f"no files under {base}")
        return self.read_files(paths, schema, filters)

    def read_files(
        self,
        paths: Iterable[str],
        schema: pa.Schema | None = None,
        filters: pc.Expression | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """The files as one frame; only `columns` (all by default), rows matching `filters`."""
        selected = list(columns) if columns is not None else None
        tables = []
        for path in paths:
            with self.fs.open(path, "rb") as handle:
                tables.append(
                    pq.read_table(handle, schema=schema, filters=filters, columns=selected)
                )
        if not tables:
            if schema is None:
                raise DataNotFound("nothing to read")
            empty = schema.empty_table()
            return (empty.select(selected) if selected is not None else empty).to_pandas()
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def read_batch(
        self,
        table: Table,
        batch: str,
        filters: pc.Expression | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """A batch table's file for `batch`, read with the table's schema."""
        path = self.path(table.path, {"batch": batch}, "part")
        if not self.fs.exists(path):
            raise DataNotFound(f"{path} does not exist")
        return self.read_files([path], table.schema, filters, columns)

    def write_batch(self, frame: pd.DataFrame, table: Table, batch: str) -> str:
        """Write a batch table's file for `batch` (atomically), cast to the table's schema."""
        return self.write(frame, table.path, "part", {"batch": batch}, table.schema)

    def has_batch(self, table: Table, batch: str) -> bool:
        return self.exists(table.path, {"batch": batch}, "part")

    def remove(self, table: str, partition: Mapping[str, str] | None = None) -> None:
        """Delete a table's partition and everything under it (nothing if it does not exist)."""
        path = self.path(table, partition)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def write_json(self, payload: str, table: str, name: str) -> str:
        """Small JSON state (watermarks, reports), atomically like the Parquet files."""
        final = f"{self.path(table)}/{name}.json"
        self.fs.makedirs(self.path(table), exist_ok=True)
        temp = f"{self.path(table)}/.tmp-{uuid.uuid4().hex}.json"
        with self.fs.open(temp, "w") as handle:
            handle.write(payload)
        self.fs.mv(temp, final)
        return final

    def read_json(self, table: str, name: str) -> str:
        path = f"{self.path(table)}/{name}.json"
        if not self.fs.exists(path):
            raise DataNotFound(f"{path} does not exist")
        with self.fs.open(path, "r") as handle:
            return str(handle.read())
