"""Source adapters: where the app's raw rows come from.

Two kinds share one small interface, so ingest does not care which it reads:
- `AppDbSource`: the INBO app database through SQLAlchemy (embedded SQLite by default, Postgres by URL);
- `FileDropSource`: exports dropped as CSV, JSONL or Parquet files under `<root>/<table>/`.

Append-only and mutable tables are read incrementally between two watermarks (`low` exclusive,
`high` inclusive); dimension tables are read as a snapshot of what existed before the interval end.
Raw rows come back as strings: the app's types are not trusted until validation has looked at them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from inbo.errors import ServiceUnavailable, SourceError

log = logging.getLogger(__name__)

Watermark = int | str


@dataclass(frozen=True)
class IncrementalTable:
    """An app table read by watermark: `column` orders rows, `time_column` bounds the interval,
    `key` names a row (with `column`, a version of a mutable row)."""

    name: str
    column: str
    time_column: str
    key: tuple[str, ...]


INCREMENTAL_TABLES: tuple[IncrementalTable, ...] = (
    IncrementalTable("experience_interactions", "id", "recorded_at", key=("id",)),
    IncrementalTable("reading_progress", "updated_at", "updated_at", key=("user_id", "issue_id")),
)
LOOKUP_CHUNK = 500
"""Ids or keys per lookup query: far below any driver's parameter limit."""

SNAPSHOT_TABLES: dict[str, str] = {
    "users": "created_at",
    "publishers": "created_at",
    "newsletter_issues": "created_at",
    "subscriptions": "subscribed_at",
}
"""Dimension tables and the column that says when a row came to exist."""


class Source(Protocol):
    name: str

    def high_watermark(self, table: IncrementalTable, until: datetime) -> Watermark | None: ...

    def read_increment(
        self, table: IncrementalTable, low: Watermark | None, high: Watermark
    ) -> pd.DataFrame: ...

    def read_snapshot(self, table: str, until: datetime) -> pd.DataFrame: ...


@runtime_checkable
class LooksUpRows(Source, Protocol):
    """A source whose rows can be looked up by id or key, so rows committed late are found.

    The app database is one; dropped files are not (they are read by name order)."""

    def read_ids(self, table: IncrementalTable, runs: Sequence[Sequence[int]]) -> pd.DataFrame: ...

    def versions(self, table: IncrementalTable, high: Watermark) -> pd.DataFrame: ...

    def read_keys(self, table: IncrementalTable, keys: pd.DataFrame) -> pd.DataFrame: ...

    def count_rows(self, table: IncrementalTable, high: Watermark) -> int: ...


def as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column as nullable strings; timestamps in ISO format so they survive a round trip."""
    out = pd.DataFrame(index=frame.index)
    for name, column in frame.items():
        if pd.api.types.is_datetime64_any_dtype(column):
            if column.dt.tz is not None:
                column = column.dt.tz_convert("UTC")
            text = column.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
        else:
            text = column.map(_as_text, na_action=None)
        out[name] = text.astype("string")
    return out.reset_index(drop=True)


def _as_text(value: object) -> str | None:
    """One cell as text, None when missing; a list (an item's tags) as the app's comma list."""
    if isinstance(value, list | tuple | np.ndarray):
        return ",".join(map(str, value))
    return None if pd.isna(value) else str(value)


def _concat_strings(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [frame for frame in frames if not frame.empty]
    return as_strings(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()


def _as_key(value: object) -> object:
    """A key read back as text: an integer again when it is one (Postgres compares types)."""
    text = str(value)
    return int(text) if text.lstrip("-").isdigit() else text


def _naive_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None) if moment.tzinfo else moment


class AppDbSource:
    """The INBO app database, read through SQLAlchemy Core."""

    name = "appdb"

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine, make_url
        from sqlalchemy.exc import ArgumentError

        try:
            database = make_url(url).database
            if url.startswith("sqlite") and database and not Path(database).exists():
                raise SourceError(
                    f"app database {database} does not exist; run `inbo simulate` to create a demo world"
                )
            self.url = url
            self.engine = create_engine(url)
        except (ArgumentError, ImportError) as exc:
            raise SourceError(
                f"cannot open the app database: {exc}; check INBO_APP_DB_URL and its driver"
            ) from None

    def _query(self, sql: str, params: dict[str, object]) -> pd.DataFrame:
        """Run `sql`; datetime parameters are bound as SQL timestamps, whatever the backend."""
        from sqlalchemy import DateTime, bindparam, text
        from sqlalchemy.exc import OperationalError, ProgrammingError

        typed = [
            bindparam(name, type_=DateTime())
            for name, v in params.items()
            if isinstance(v, datetime)
        ]
        try:
            with self.engine.connect() as conn:
                return pd.read_sql(text(sql).bindparams(*typed), conn, params=params)
        except (OperationalError, ProgrammingError, pd.errors.DatabaseError) as exc:
            # pandas wraps an error raised while reading in its own DatabaseError
            error = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) else exc
            orig = getattr(error, "orig", None)
            message = str(orig or error).splitlines()[0]
            if "no such table" in message or "does not exist" in message:
                raise SourceError(
                    f"app database {self.engine.url!r} has no table: {message}; "
                    "run `inbo simulate` to create a demo world"
                ) from None
            raise ServiceUnavailable(
                f"app database {self.engine.url!r} is unreachable: {message}"
            ) from None

    def high_watermark(self, table: IncrementalTable, until: datetime) -> Watermark | None:
        frame = self._query(
            f"SELECT MAX({table.column}) AS high FROM {table.name} "
            f"WHERE {table.time_column} < :until",
            {"until": _naive_utc(until)},
        )
        value = frame["high"].iloc[0]
        if value is None or pd.isna(value):
            return None
        return int(value) if table.column == "id" else pd.Timestamp(value).isoformat()

    def read_increment(
        self, table: IncrementalTable, low: Watermark | None, high: Watermark
    ) -> pd.DataFrame:
        bound = (
            (lambda v: v) if table.column == "id" else (lambda v: pd.Timestamp(v).to_pydatetime())
        )
        where = f"{table.column} <= :high"
        params: dict[str, object] = {"high": bound(high)}
        if low is not None:
            where += f" AND {table.column} > :low"
            params["low"] = bound(low)
        frame = self._query(
            f"SELECT * FROM {table.name} WHERE {where} ORDER BY {table.column}", params
        )
        return as_strings(frame)

    def read_ids(self, table: IncrementalTable, runs: Sequence[Sequence[int]]) -> pd.DataFrame:
        """Rows whose id falls in one of the inclusive [first, last] `runs` (the gap set)."""
        frames = []
        for start in range(0, len(runs), LOOKUP_CHUNK):
            params: dict[str, object] = {}
            clauses = []
            for n, (first, last) in enumerate(runs[start : start + LOOKUP_CHUNK]):
                params[f"a{n}"], params[f"b{n}"] = int(first), int(last)
                clauses.append(f"(id BETWEEN :a{n} AND :b{n})")
            frames.append(
                self._query(f"SELECT * FROM {table.name} WHERE {' OR '.join(clauses)}", params)
            )
        return _concat_strings(frames)

    def versions(self, table: IncrementalTable, high: Watermark) -> pd.DataFrame:
        """Key and version of every row whose version is at or below `high` (the sweep)."""
        columns = ", ".join([*table.key, table.column])
        frame = self._query(
            f"SELECT {columns} FROM {table.name} WHERE {table.column} <= :high",
            {"high": pd.Timestamp(high).to_pydatetime()},
        )
        return as_strings(frame)

    def read_keys(self, table: IncrementalTable, keys: pd.DataFrame) -> pd.DataFrame:
        """Current rows of the given keys, in chunks."""
        frames = []
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys.iloc[start : start + LOOKUP_CHUNK]
            params: dict[str, object] = {}
            clauses = []
            for n, row in enumerate(chunk.itertuples(index=False)):
                terms = []
                for column, value in zip(table.key, row, strict=True):
                    params[f"{column}{n}"] = _as_key(value)
                    terms.append(f"{column} = :{column}{n}")
                clauses.append("(" + " AND ".join(terms) + ")")
            frames.append(
                self._query(f"SELECT * FROM {table.name} WHERE {' OR '.join(clauses)}", params)
            )
        return _concat_strings(frames)

    def count_rows(self, table: IncrementalTable, high: Watermark) -> int:
        """Rows whose watermark column is at or below `high`."""
        frame = self._query(
            f"SELECT COUNT(*) AS n FROM {table.name} WHERE {table.column} <= :high",
            {"high": high if table.column == "id" else pd.Timestamp(high).to_pydatetime()},
        )
        return int(frame["n"].iloc[0])

    def read_snapshot(self, table: str, until: datetime) -> pd.DataFrame:
        column = SNAPSHOT_TABLES[table]
        frame = self._query(
            f"SELECT * FROM {table} WHERE {column} < :until ORDER BY 1",
            {"until": _naive_utc(until)},
        )
        return as_strings(frame)


class FileDropSource:
    """Exports dropped as files: `<root>/<table>/<name>.{csv,jsonl,parquet}`.

    Files are taken in name order, so exports should be named by time (e.g. `2026-11-26T0100.csv`);
    the watermark of an incremental table is the last file name read.
    """

    name = "filedrop"
    suffixes = (".csv", ".jsonl", ".parquet")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _files(self, table: str) -> list[Path]:
        folder = self.root / table
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix in self.suffixes)

    @staticmethod
    def _read(path: Path) -> pd.DataFrame:
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)

    def _concat(self, paths: list[Path]) -> pd.DataFrame:
        if not paths:
            return pd.DataFrame()
        frames = []
        for path in paths:
            try:
                frames.append(self._read(path))
            except (ValueError, OSError) as exc:
                raise SourceError(f"cannot read dropped file {path}: {exc}") from None
        return as_strings(pd.concat(frames, ignore_index=True))

    def high_watermark(self, table: IncrementalTable, until: datetime) -> Watermark | None:
        files = self._files(table.name)
        return files[-1].name if files else None

    def read_increment(
        self, table: IncrementalTable, low: Watermark | None, high: Watermark
    ) -> pd.DataFrame:
        chosen = [
            p
            for p in self._files(table.name)
            if (low is None or p.name > str(low)) and p.name <= str(high)
        ]
        log.info("reading %d dropped files of %s", len(chosen), table.name)
        return self._concat(chosen)

    def read_snapshot(self, table: str, until: datetime) -> pd.DataFrame:
        frame = self._concat(self._files(table))
        column = SNAPSHOT_TABLES[table]
        if frame.empty or column not in frame:
            return frame
        stamps = pd.to_datetime(frame[column], errors="coerce", utc=True, format="ISO8601")
        existed = stamps.isna() | (stamps < pd.Timestamp(until))
        return frame[existed].reset_index(drop=True)


def open_source(kind: str, location: str) -> Source:
    """The adapter for `kind` ('appdb' with a SQLAlchemy URL, 'filedrop' with a folder)."""
    if kind == "appdb":
        return AppDbSource(location)
    if kind == "filedrop":
        return FileDropSource(location)
    raise SourceError(f"unknown source kind {kind!r}; expected 'appdb' or 'filedrop'")
