"""The INBO app's own database: the raw tables the app writes and the ingest reads.

These are the app's names, not the lake's (see `inbo.schemas`); the ingest maps one onto the
other. Every timestamp is naive UTC. On SQLite, SQLAlchemy stores a `DateTime` as the text
`YYYY-MM-DD HH:MM:SS.ffffff`, so read through these `Table` objects to get datetimes back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    make_url,
)

from inbo.schemas import APP_INTERACTION_KINDS

log = logging.getLogger(__name__)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("country", String),
    Column("language", String),
)

publishers = Table(
    "publishers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("category", String, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

newsletter_issues = Table(
    "newsletter_issues",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("publisher_id", Integer, nullable=False),
    Column("title", String, nullable=False),
    Column("body_preview", Text),
    Column("category", String, nullable=False),
    Column("tags", String),  # comma-separated topic words
    Column("language", String),
    Column("published_at", DateTime, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("user_id", Integer, nullable=False),
    Column("publisher_id", Integer, nullable=False),
    Column("subscribed_at", DateTime, nullable=False),
    Column("unsubscribed_at", DateTime, nullable=True),
)

experience_interactions = Table(
    "experience_interactions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, nullable=False),
    Column("issue_id", Integer, nullable=False),
    Column("kind", String, nullable=False),  # one of INTERACTION_KINDS
    Column("occurred_at", DateTime, nullable=False),
    Column("recorded_at", DateTime, nullable=False),
    Column("session_id", String),
    Column("dwell_ms", Integer, nullable=True),
    Column("position", Integer, nullable=True),
    Column("surface", String),
    Column("device", String),
    Column("country", String),
    Column("rec_context", Text, nullable=True),  # JSON: table_version, source, variant
    Index("ix_experience_interactions_recorded_at", "recorded_at"),
)

reading_progress = Table(
    "reading_progress",
    metadata,
    Column("user_id", Integer, primary_key=True, autoincrement=False),
    Column("issue_id", Integer, primary_key=True, autoincrement=False),
    Column("progress", Float, nullable=False),  # 0..1
    Column("seconds_read", Float, nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("session_id", String),
    Column("device", String),
    Index("ix_reading_progress_updated_at", "updated_at"),
)

INTERACTION_KINDS = APP_INTERACTION_KINDS


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
