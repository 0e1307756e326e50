"""The INBO app's database as a place to connect to: engines and creating its tables.

The tables themselves are `inbo.app_schema` (spelled once, shared with validation and ingest).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url

from inbo.app_schema import metadata

log = logging.getLogger(__name__)


def create_app_schema(engine: Engine) -> None:
    """Create the app's tables and indexes that do not exist yet."""
    metadata.create_all(engine)
    log.debug("app schema ready on %s", engine.url.render_as_string(hide_password=True))


def app_engine(url: str) -> Engine:
    """Engine for the app database; a SQLite file gets its folder and WAL on every connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the ingest read while the app (or the simulator) writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
