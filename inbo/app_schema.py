"""The INBO app's own tables, as the app writes them: the outside system's schema, spelled once.

These are the app's names, not the lake's (`inbo.schemas`): ingest maps one onto the other, the
raw suite checks these columns, the simulator writes them, reconciliation counts them. Every
timestamp is naive UTC. On SQLite, SQLAlchemy stores a `DateTime` as the text
`YYYY-MM-DD HH:MM:SS.ffffff`, so read through these `Table` objects to get datetimes back.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text

KIND_TO_EVENT_TYPE: dict[str, str] = {
    "impression": "impression",
    "email_open": "open",
    "click": "click",
    "bookmark": "save",
    "share": "share",
    "hide": "dismiss",
    "subscribe": "subscribe",
    "unsubscribe": "unsubscribe",
}
"""The app's `experience_interactions.kind` values, as the canonical event types they stand for
(reads live in `reading_progress`)."""
INTERACTION_KINDS: tuple[str, ...] = tuple(KIND_TO_EVENT_TYPE)

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
    Index("ix_newsletter_issues_published_at", "published_at"),  # anomaly detection's polls
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
