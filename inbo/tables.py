"""Every table of the lake, spelled once: its path under the lake root, its schema, who writes it.

Batch tables hold one file per batch, `<path>/batch=<key>/part.parquet` (`Lake.read_batch`);
report and state folders hold one JSON file per batch (`Lake.read_json`). Steps import these
constants instead of spelling paths, so a table's name and schema change in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from inbo import schemas


@dataclass(frozen=True)
class Table:
    """A lake table: `path` under the lake root and the schema its files are read with (None:
    whatever the writer wrote, e.g. a feature table whose columns follow the code)."""

    path: str
    schema: pa.Schema | None = None


def raw(source_table: str) -> Table:
    """The app's rows of one source table exactly as extracted (strings), written by ingest."""
    return Table(f"raw/{source_table}")


def staging(table: str) -> Table:
    """A canonical table converted by ingest and not yet validated."""
    return Table(f"staging/{table}", schemas.BY_NAME.get(table))


def quarantine(source_table: str) -> Table:
    """Rows of one source table that failed a check: `<check stage>.parquet` per batch."""
    return Table(f"quarantine/{source_table}")


QUARANTINE_ROOT = "quarantine"


def held(table: str) -> Table:
    """A validated canonical table of a batch above the quarantine threshold, kept out of the lake
    until the batch passes or an operator accepts it (`pipelines.validate.accept_batch`)."""
    return Table(f"{HELD_ROOT}/{table}", schemas.BY_NAME.get(table))


HELD_ROOT = "held"

# -- validated canonical tables (pipelines.validate) ---------------------------------------------
USER_EVENTS = Table("user_events", schemas.USER_EVENTS)
"""Partitioned by event date: `user_events/date=YYYY-MM-DD/<batch>.parquet`."""
ITEMS = Table("items", schemas.ITEMS)
USERS = Table("users", schemas.USERS)
SUBSCRIPTIONS = Table("subscriptions", schemas.SUBSCRIPTIONS)

# -- features (features/) ------------------------------------------------------------------------
INTERACTIONS = Table("features/interactions", schemas.INTERACTIONS)
CONTINUE_READING = Table("features/continue_reading", schemas.CONTINUE_READING)
EMBEDDINGS = Table("features/embeddings", schemas.EMBEDDINGS)
MORE_LIKE_THIS = Table("features/more_like_this")
"""Each item's similar items from the nightly content model."""
MORE_LIKE_THIS_HOURLY = Table("features/more_like_this_hourly")
"""Similar items of the issues an hourly run indexed."""
ITEM_RANKING = Table("features/item_ranking")
"""The reranker's item features at a batch end (columns follow `features.ranking`)."""
ITEM_ACTIVITY = Table("features/item_activity")
USER_ACTIVITY = Table("features/user_activity")

# -- scoring (pipelines.score, pipelines.hourly) -------------------------------------------------
RECS = Table("recs", schemas.RECOMMENDATIONS)
"""Per-user lists, one file per user shard: `recs/batch=K/shard=<key>/part.parquet`."""
RECS_USERS = Table("recs_users", schemas.RECS_USERS)
"""Who gets a personal row, with their shard."""
RECS_FALLBACK = Table("recs_fallback")
"""The fallback (trending) list of a batch."""
RECS_HOURLY = Table("recs_hourly", schemas.RECOMMENDATIONS)

# -- reports and state: one JSON file per batch --------------------------------------------------
INGEST_REPORTS = "_reports/ingest"
VALIDATE_REPORTS = "_reports/validate"
SCORE_PLANS = "_reports/score"
"""The batch's score plan (`pipelines.score.ScorePlan`), also read by publishing."""
EVALUATE_REPORTS = "_reports/evaluate"
GATE_REPORTS = "_reports/gate"
HOURLY_SCORE_REPORTS = "_reports/hourly_score"
HOURLY_REPORTS = "_reports/hourly"
RECONCILE_REPORTS = "_reports/reconcile"
WATERMARKS = "_state/watermarks"
"""Per source table: each batch's planned watermark range and the head (`_head.json`)."""
LEDGERS = "_state/ledgers"
"""Per source: the version of each mutable row last taken (`pipelines.extract`), one snapshot."""
EXPERIMENT_STATES = "_state/experiments"
"""One JSON per experiment ever started: status, when it started and stopped, its bucket range."""
COUNTER_BACKUPS = Table("_backups/item_counters")
"""The app's counters as they were before a repair, one file per backup id."""
