"""Hourly refresh: keep the live table fresh between nightly retrains, for the users who were active.

The nightly table version is computed from the data up to its batch. The live version's meta
record says how far hourly runs have brought it (`refreshed_through`, the nightly batch until the
first refresh). A run scores the users with validated events in any batch after that mark, up to
its own batch: a run that was skipped, failed or lost the race to a new nightly version is caught
up by the next one, and a re-run of a batch already applied changes nothing.

`score_active_users` folds their interactions since the nightly batch into the champion ALS
(implicit's recalculate-user path, no retrain), refreshes their continue-reading, category and
content profiles, indexes issues published since the nightly fit, regenerates candidates and
reranks them with the champion reranker, exactly as the nightly shard scoring does.
`publish_active_users` writes them into the live version under the publish lock, one SET per
user, and records the event-to-live latency.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from features.activity import build_activity
from features.embeddings import embed_new_items
from inbo import schemas, tables
from inbo.errors import DataNotFound
from inbo.lake import Lake, batch_end, batch_key
from inbo.locks import PUBLISH, platform_lock
from inbo.services import durable_writes, redis_connection
from inbo.settings import Settings, get_settings
from models.base import TrainingData
from models.candidates import CandidateModels
from models.content import published_vectors
from pipelines import tracking
from pipelines.ingest import ingest_exclusive
from pipelines.publish.contract import PIPELINE_BATCH
from pipelines.publish.lifecycle import live_meta
from pipelines.publish.versions import refresh_users
from pipelines.score import (
    PolicyRanker,
    pinned_parts,
    plan_allocation,
    read_plan,
    with_variants,
)
from pipelines.training_data import Embeddings, load_training_data
from pipelines.validate import validate_exclusive

log = logging.getLogger(__name__)
T = TypeVar("T")

EXPERIMENT = "inbo-hourly"
SIMILAR_K = 10
"""Length of a new issue's "more like this" list, as the nightly's."""


@dataclass(frozen=True)
class LiveTable:
    """The live version, the nightly batch it was computed from, and how far it was refreshed."""

    version: str
    batch: str
    refreshed_through: str


@dataclass(frozen=True)
class HourlyScore:
    """What `score_active_users` did for a batch; `version` is None when nothing is live."""

    batch: str
    version: str | None
    nightly_batch: str | None
    since: str | None
    increment_events: int = 0
    active_users: int = 0
    users_scored: int = 0
    new_items: int = 0
    newest_event_at: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class HourlyPublish:
    """What `publish_active_users` did: `status` says why nothing was written when nothing was."""

    batch: str
    status: str
    version: str | None
    users: int = 0
    new_users: int = 0
    similar_items: int = 0
    newest_event_at: str | None = None
    published_at: str | None = None
    freshness_seconds: float | None = None
    seconds: float = 0.0


PUBLISHED, NOTHING_LIVE, NO_ACTIVE_USERS, ALREADY_APPLIED, SUPERSEDED = (
    "published",
    "nothing live",
    "no active users",
    "already applied",
    "superseded",
)


@dataclass(frozen=True)
class RefreshRun:
    """One hourly refresh run in a single process: what scoring and publishing did, and the
    wall time of every step by name."""

    score: HourlyScore
    publish: HourlyPublish
    step_seconds: dict[str, float]


def refresh(interval_end: datetime, settings: Settings | None = None) -> RefreshRun:
    """The `inbo_hourly` DAG's refresh steps in order, in this process (`inbo refresh`, the
    hourly benchmark): ingest, validate, build_activity, embed_new_items, score, publish."""
    settings = settings or get_settings()
    seconds: dict[str, float] = {}
    for step in (ingest_exclusive, validate_exclusive, build_activity, embed_new_items):
        _timed(seconds, step, interval_end, settings)
    score = _timed(seconds, score_active_users, interval_end, settings)
    published = _timed(seconds, publish_active_users, interval_end, settings)
    return RefreshRun(score, published, seconds)


def _timed(
    seconds: dict[str, float],
    step: Callable[[datetime, Settings], T],
    interval_end: datetime,
    settings: Settings,
) -> T:
    started = time.perf_counter()
    result = step(interval_end, settings)
    seconds[step.__name__] = time.perf_counter() - started
    return result


def live_table(settings: Settings) -> LiveTable | None:
    """The live version and its refresh mark, from its meta record (None before any publish)."""
    with redis_connection(settings) as client:
        meta = live_meta(client, settings.redis_prefix)
    if meta is None:
        return None
    return LiveTable(meta["version"], meta["batch"], meta.get("refreshed_through") or meta["batch"])


def batch_events(lake: Lake, after: str, through: str) -> pd.DataFrame:
    """Validated events ingested by the batches after `after` up to `through`, any timestamp.

    By batch, not by timestamp: a late event belongs to the batch that ingested it, so it is
    seen by the first refresh after it arrived, and never by two.
    """
    paths = [
        path
        for path in lake.files(tables.USER_EVENTS.path, "date=*/*.parquet")
        if after < path.rsplit("/", 1)[-1].removesuffix(".parquet") <= through
    ]
    events = lake.read_files(paths, schemas.USER_EVENTS)
    return events.drop_duplicates("event_id").reset_index(drop=True)


def score_active_users(interval_end: datetime, settings: Settings | None = None) -> HourlyScore:
    """Rescore the users active since the live table's refresh mark; write `recs_hourly`."""
    started = time.perf_counter()
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    live = live_table(settings)
    if live is None:
        log.warning("no live table yet: the nightly DAG must publish one before hourly can refresh")
        return _record_score(lake, HourlyScore(batch, None, None, None))
    since = _since(lake, batch, live)
    increment = (
        batch_events(lake, since, batch) if since < batch else schemas.empty(schemas.USER_EVENTS)
    )
    active = np.sort(increment["user_id"].unique()).astype(np.int64)
    newest = increment["ts"].max() if len(increment) else None
    summary = HourlyScore(
        batch,
        live.version,
        live.batch,
        since,
        increment_events=len(increment),
        active_users=len(active),
        newest_event_at=None if newest is None else _utc_text(newest),
    )
    if not len(active):
        _write_recs(lake, batch, schemas.empty(schemas.RECOMMENDATIONS), None)
        return _record_score(lake, summary)
    plan = read_plan(batch_end(live.batch), settings)
    als, reranker = pinned_parts(settings, plan.versions)
    sources = CandidateModels.load(settings.model_dir(live.batch), als=als)
    data = load_training_data(
        settings, interval_end, users=active, rebuild=True, embeddings=Embeddings.LATEST
    )
    new_items, similar = fold_in(sources, data)
    trending = lake.read_batch(tables.RECS_FALLBACK, live.batch)
    item_table = (
        lake.read_batch(tables.ITEM_RANKING, batch).set_index("item_id")
        if reranker is not None
        else None
    )
    ranker = PolicyRanker(settings, data, sources, reranker, trending, item_table)
    recs, _ = ranker.rank(plan.allocation(), active)
    _write_recs(lake, batch, recs, similar)
    summary = replace(
        summary,
        users_scored=int(recs["user_id"].nunique()),
        new_items=len(new_items),
        models=plan.models,
        seconds=round(time.perf_counter() - started, 3),
    )
    return _record_score(lake, summary)


def fold_in(sources: CandidateModels, data: TrainingData) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Bring the live table's sources up to `data.as_of` for the active users, in place.

    Their ALS rows are replaced by their rows rebuilt now and their factors re-solved against
    the fixed item factors; continue reading, category affinity and content profile are rebuilt
    from `data`; issues published since are indexed. Replacing rather than adding keeps a re-run,
    or a run after several others, from counting an event twice. Returns the new issues and
    their "more like this" lists.
    """
    if sources.als is not None:
        sources.als.refit_users(data.interactions)
    sources.continue_reading.fit(data)
    sources.popularity.refresh_users(data.interactions, _published(data))
    if sources.content is None or data.embeddings is None:
        return np.empty(0, dtype=np.int64), None
    new_items = sources.content.add_items(published_vectors(data, data.embeddings))
    sources.content.refresh_users(data.interactions, data.as_of)
    similar = sources.content.similar_to(new_items, SIMILAR_K) if len(new_items) else None
    return new_items, similar


def publish_active_users(interval_end: datetime, settings: Settings | None = None) -> HourlyPublish:
    """Write the batch's refreshed rows into the live version, if it is still the one scored for."""
    started = time.perf_counter()
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    scored = read_score(lake, batch)
    if scored.version is None:
        return _record_publish(settings, HourlyPublish(batch, NOTHING_LIVE, None))
    recs = lake.read_batch(tables.RECS_HOURLY, batch)
    similar = (
        lake.read_batch(tables.MORE_LIKE_THIS_HOURLY, batch)
        if lake.has_batch(tables.MORE_LIKE_THIS_HOURLY, batch)
        else None
    )
    experiments = plan_allocation(batch_end(scored.nightly_batch or batch), settings)
    with platform_lock(settings, PUBLISH), redis_connection(settings) as client:
        meta = live_meta(client, settings.redis_prefix)
        status = _publish_status(meta, scored, batch, recs)
        if status != PUBLISHED:
            log.info("hourly %s: %s, nothing written", batch, status)
            return _record_publish(settings, HourlyPublish(batch, status, scored.version))
        with durable_writes(settings, client):
            report = refresh_users(
                client,
                settings.redis_prefix,
                scored.version,
                with_variants(pa.Table.from_pandas(recs, preserve_index=False), experiments),
                through=batch,
                generated_at=datetime.now(UTC),
                batch_size=PIPELINE_BATCH,
                similar=similar,
            )
    published_at = datetime.now(UTC)
    newest = pd.Timestamp(scored.newest_event_at) if scored.newest_event_at else None
    summary = HourlyPublish(
        batch,
        PUBLISHED,
        scored.version,
        users=report.users,
        new_users=report.new_users,
        similar_items=report.similar_items,
        newest_event_at=scored.newest_event_at,
        published_at=_utc_text(published_at),
        freshness_seconds=None
        if newest is None
        else round((pd.Timestamp(published_at) - newest).total_seconds(), 3),
        seconds=round(time.perf_counter() - started, 3),
    )
    return _record_publish(settings, summary)


def read_score(lake: Lake, batch: str) -> HourlyScore:
    """The batch's score report; `DataNotFound` before `score_active_users` ran for it."""
    return HourlyScore(**json.loads(lake.read_json(tables.HOURLY_SCORE_REPORTS, batch)))


def latest_refresh(
    settings: Settings | None = None, *, version: str | None = None, after: str = ""
) -> HourlyPublish | None:
    """The newest hourly publish report (None before the first run); with `version`, the newest
    that refreshed that table version, looking only at batches after `after` (the batch the
    version was built from: none before it can have refreshed it)."""
    lake = Lake((settings or get_settings()).lake)
    for name in reversed([n for n in lake.names(tables.HOURLY_REPORTS) if n > after]):
        report = HourlyPublish(**json.loads(lake.read_json(tables.HOURLY_REPORTS, name)))
        if version is None or report.version == version:
            return report
    return None


def _since(lake: Lake, batch: str, live: LiveTable) -> str:
    """Where this batch's increment starts: the live refresh mark, or, for a re-run of a batch
    already scored against this same version, the mark that first run used (same users again)."""
    try:
        earlier = read_score(lake, batch)
    except DataNotFound:
        return live.refreshed_through
    if earlier.version == live.version and earlier.since is not None:
        return earlier.since
    return live.refreshed_through


def _publish_status(
    meta: dict[str, object] | None, scored: HourlyScore, batch: str, recs: pd.DataFrame
) -> str:
    if meta is None or meta["version"] != scored.version:
        return SUPERSEDED
    mark = str(meta.get("refreshed_through") or meta["batch"])
    if mark > batch:
        return SUPERSEDED
    if mark == batch:
        return ALREADY_APPLIED
    return PUBLISHED if len(recs) else NO_ACTIVE_USERS


def _published(data: TrainingData) -> pd.DataFrame:
    return data.items[data.items["published_at"] < pd.Timestamp(data.as_of)]


def _write_recs(lake: Lake, batch: str, recs: pd.DataFrame, similar: pd.DataFrame | None) -> None:
    lake.write_batch(recs, tables.RECS_HOURLY, batch)
    if similar is not None and len(similar):
        lake.write_batch(similar, tables.MORE_LIKE_THIS_HOURLY, batch)
    elif lake.has_batch(tables.MORE_LIKE_THIS_HOURLY, batch):
        lake.remove(tables.MORE_LIKE_THIS_HOURLY.path, {"batch": batch})


def _record_score(lake: Lake, summary: HourlyScore) -> HourlyScore:
    lake.write_json(
        json.dumps(asdict(summary), indent=2), tables.HOURLY_SCORE_REPORTS, summary.batch
    )
    log.info("hourly score %s", summary)
    return summary


def _record_publish(settings: Settings, summary: HourlyPublish) -> HourlyPublish:
    """Write the report to the lake and, when rows went live, the run's metrics to MLflow.

    A re-run that finds its batch already applied keeps the report of the run that applied it
    (so `inbo status` still shows when the rows went live) and logs its metrics again, in case
    MLflow was what failed the first time.
    """
    lake = Lake(settings.lake)
    if summary.status == ALREADY_APPLIED:
        try:
            applied = HourlyPublish(
                **json.loads(lake.read_json(tables.HOURLY_REPORTS, summary.batch))
            )
        except DataNotFound:
            applied = summary
        if applied.status == PUBLISHED:
            summary = applied
    lake.write_json(json.dumps(asdict(summary), indent=2), tables.HOURLY_REPORTS, summary.batch)
    if summary.status == PUBLISHED:
        _log_metrics(settings, summary)
    log.info("hourly publish %s", summary)
    return summary


def _log_metrics(settings: Settings, summary: HourlyPublish) -> None:
    """The refresh's size and freshness in the MLflow experiment `inbo-hourly`, one run per batch."""
    metrics = {
        "users_refreshed": float(summary.users),
        "new_users": float(summary.new_users),
        "new_similar_items": float(summary.similar_items),
        "publish_seconds": summary.seconds,
    }
    if summary.freshness_seconds is not None:
        metrics["freshness_seconds"] = summary.freshness_seconds
    tracking.log_step_run(
        settings,
        "hourly_refresh",
        summary.batch,
        {"table_version": summary.version},
        metrics,
        experiment=EXPERIMENT,
    )


def _utc_text(moment: datetime | pd.Timestamp) -> str:
    return pd.Timestamp(moment).tz_convert(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
