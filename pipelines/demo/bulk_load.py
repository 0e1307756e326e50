"""Bulk inserts into the app database: numpy columns straight to the DBAPI, in chunks of rows.

A day of events is too many rows for per-row Core inserts, so they go to the driver's
`executemany`, written in the formats SQLAlchemy reads back (on SQLite, its own datetime text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Integer, Table
from sqlalchemy.types import TypeEngine

CHUNK_ROWS = 50_000
_MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}  # placeholder per DBAPI paramstyle


def tune_for_bulk_load(conn: Connection) -> None:
    # The simulation can always be rerun, so SQLite may skip fsyncs while it loads.
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA synchronous=OFF")
        conn.exec_driver_sql("PRAGMA cache_size=-65536")
        conn.exec_driver_sql("PRAGMA temp_store=MEMORY")


def insert(conn: Connection, table: Table, columns: Mapping[str, Any]) -> int:
    """Insert the table's columns found in `columns` through the DBAPI, in chunks of rows."""
    names = [column.name for column in table.columns if column.name in columns]
    marker = _MARKERS[conn.dialect.paramstyle]
    sql = (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([marker] * len(names))})"
    )
    sqlite = conn.dialect.name == "sqlite"
    arrays = [np.asarray(columns[name]) for name in names]
    total = len(arrays[0])
    for offset in range(0, total, CHUNK_ROWS):
        chunk = [
            _db_values(values[offset : offset + CHUNK_ROWS], table.c[name].type, sqlite)
            for name, values in zip(names, arrays, strict=True)
        ]
        conn.exec_driver_sql(sql, list(zip(*chunk, strict=True)))
    return total


def _db_values(values: np.ndarray, sql_type: TypeEngine[Any], sqlite: bool) -> list[Any]:
    """One column as the Python values the driver takes; NaN and NaT become NULL."""
    missing = pd.isna(values)
    if values.dtype.kind == "M":
        stamps = values.astype("datetime64[us]")
        if sqlite:  # SQLAlchemy's own text format, so its range filters compare correctly
            out = np.strings.replace(np.datetime_as_string(stamps, unit="us"), "T", " ")
            out = out.astype(object)
        else:
            out = stamps.astype(object)
    elif isinstance(sql_type, Integer) and values.dtype.kind == "f":
        out = np.where(missing, 0, values).astype(np.int64).astype(object)
    else:
        out = values.astype(object)
    out[missing] = None
    return list(out.tolist())
