"""Canonical tables of the lake: the one place their columns and types are defined.

Every step reads and writes these schemas; `conform` casts a frame to one and fails loudly on a
missing column instead of letting a typo travel downstream.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from inbo.errors import SourceError

EVENT_TYPES: tuple[str, ...] = (
    "impression",
    "open",
    "click",
    "read",
    "save",
    "share",
    "dismiss",
    "subscribe",
    "unsubscribe",
)

TS = pa.timestamp("us", tz="UTC")

USERS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("created_at", TS, nullable=False),
        pa.field("country", pa.string()),
        pa.field("language", pa.string()),
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("publisher_id", pa.int64(), nullable=False),
        pa.field("publisher", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("category", pa.string(), nullable=False),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("published_at", TS, nullable=False),
        pa.field("language", pa.string()),
    ]
)

SUBSCRIPTIONS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("publisher_id", pa.int64(), nullable=False),
        pa.field("subscribed_at", TS, nullable=False),
        pa.field("unsubscribed_at", TS),
    ]
)

USER_EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("dwell_seconds", pa.float64()),
        pa.field("read_fraction", pa.float64()),
        pa.field("position", pa.int32()),
        pa.field("surface", pa.string()),
        pa.field("device", pa.string()),
        pa.field("country", pa.string()),
        pa.field("rec_table_version", pa.string()),
        pa.field("rec_source", pa.string()),
        pa.field("rec_variant", pa.string()),
    ]
)

CONTINUE_READING = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("read_fraction", pa.float64(), nullable=False),
        pa.field("updated_at", TS, nullable=False),
    ]
)

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("events", pa.int32(), nullable=False),
        pa.field("last_ts", TS, nullable=False),
        pa.field("read_fraction", pa.float64(), nullable=False),
        pa.field("is_read", pa.bool_(), nullable=False),
        pa.field("dismissed", pa.bool_(), nullable=False),
    ]
)

RECOMMENDATIONS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason_code", pa.string(), nullable=False),
        pa.field("reason_ref", pa.int64()),
    ]
)
"""`reason_code` is one of `inbo.reasons.REASONS`; `reason_ref` is what it refers to: the id of the
issue the user read (because_you_read, similar_to_read), the percent read (continue_reading);
null for reasons without one. The sentence is rendered from the code's template where it is shown
(`inbo.reasons.render`, docs/redis-contract.md)."""

RECS_USERS = pa.schema(
    [pa.field("user_id", pa.int64(), nullable=False), pa.field("shard", pa.int64(), False)]
)

EMBEDDINGS = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)
"""One MiniLM vector per item; `content_hash` covers the model and the text it encoded."""

BY_NAME: dict[str, pa.Schema] = {
    "users": USERS,
    "items": ITEMS,
    "subscriptions": SUBSCRIPTIONS,
    "user_events": USER_EVENTS,
}
"""The canonical tables ingest stages and validation promotes, by table name."""


def conform(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Return `frame` with exactly the schema's columns, cast to its types."""
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise SourceError(f"missing columns {missing}; expected {schema.names}")
    table = pa.Table.from_pandas(frame[schema.names], preserve_index=False)
    return table.cast(schema).to_pandas()


def empty(schema: pa.Schema) -> pd.DataFrame:
    """An empty frame with the schema's columns and types."""
    return schema.empty_table().to_pandas()
