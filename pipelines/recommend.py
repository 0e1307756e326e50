"""Score: every user's top-N from the champion models, with a reason on every item.

Candidates come from the batch's sources with the `champion` ALS from the MLflow registry, and the
`champion` reranker orders them; trending issues fill short lists. Read and dismissed issues never
appear. Without a registered reranker (a first run that could not train one) the baseline blend
is used: continue reading first, then the personal candidates by score, then trending.

Scoring runs per user shard so a task's memory follows the shard's size, not the user count:
`prepare_scoring` writes once what every shard needs (the user list with each user's shard, the
fallback list, the item features of the reranker, the champion versions pinned for all shards),
then `score_shard` reads only its users' rows and writes `recs/batch=K/shard=<key>/part.parquet`.
Every user's list depends only on their own rows and the shared item-side models, so one shard
and many shards give the same table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.interactions import MODEL_EVENT_COLUMNS, load_events
from features.ranking import RANKING_ITEM_TABLE, catalogue_item_features, ranking_features
from inbo import schemas
from inbo.errors import DataNotFound
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from inbo.shards import shard_key, user_shard
from models.als import ALSModel
from models.base import TrainingData
from models.candidates import REASON_PRIORITY, CandidateModels, generate
from models.hybrid import SOURCE_OF_REASON, seen_pairs
from models.popularity import PopularityModel
from models.reranker import Reranker
from pipelines import registry
from pipelines.train import model_dir

log = logging.getLogger(__name__)

REPORTS = "_reports/score"
"""The batch's score plan (`ScorePlan`), also read by publishing for the models it names."""
USERS_TABLE = "recs_users"
"""Who gets a personal row, with their shard: (user_id, shard)."""
USERS_SCHEMA = pa.schema(
    [pa.field("user_id", pa.int64(), nullable=False), pa.field("shard", pa.int64(), False)]
)


@dataclass(frozen=True)
class ScorePlan:
    """What `prepare_scoring` fixed for every shard of a batch."""

    batch: str
    shards: int
    users: int
    fallback_items: int
    versions: dict[str, int] = field(default_factory=dict)
    """Registry versions of the champion models, pinned so every shard scores with the same ones."""
    models: dict[str, str] = field(default_factory=dict)
    """The models behind the table, named for its metadata."""


@dataclass(frozen=True)
class ShardSummary:
    batch: str
    shard: int
    shards: int
    users: int
    rows: int
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of the task's phases: load (data and models), candidates, rerank (and fill)."""


@dataclass(frozen=True)
class ScoreSummary:
    batch: str
    shards: int
    users: int
    rows: int
    fallback_items: int
    models: dict[str, str] = field(default_factory=dict)


def blend(candidates: pd.DataFrame, seen: pd.DataFrame, n: int) -> pd.DataFrame:
    """Each user's top `n` distinct items by (reason priority, score), `seen` pairs removed."""
    kept = candidates.merge(seen.assign(_seen=True), on=["user_id", "item_id"], how="left")
    kept = kept[kept["_seen"].isna()].drop(columns="_seen")
    priority = {code: i for i, code in enumerate(REASON_PRIORITY)}
    kept = kept.assign(_priority=kept["reason_code"].map(priority).fillna(len(priority)))
    kept = kept.sort_values(
        ["user_id", "_priority", "score", "item_id"], ascending=[True, True, False, True]
    ).drop_duplicates(["user_id", "item_id"])
    kept = kept[kept.groupby("user_id").cumcount() < n]
    ranked = kept.assign(rank=kept.groupby("user_id").cumcount() + 1)
    return schemas.conform(ranked.drop(columns="_priority"), schemas.RECOMMENDATIONS)


def fill(ranked: pd.DataFrame, trending: pd.DataFrame, seen: pd.DataFrame, n: int) -> pd.DataFrame:
    """`ranked` lists topped up to `n` with trending issues the user has not seen or been given."""
    users = ranked["user_id"].unique() if len(ranked) else np.array([], dtype=np.int64)
    filler = trending.merge(pd.DataFrame({"user_id": users}), how="cross")
    filler = filler.assign(rank=filler["rank"] + n)
    pool = pd.concat([ranked, filler], ignore_index=True)
    pool = pool.merge(seen.assign(_seen=True), on=["user_id", "item_id"], how="left")
    pool = pool[pool["_seen"].isna()].drop(columns="_seen")
    pool = pool.sort_values(["user_id", "rank", "item_id"]).drop_duplicates(["user_id", "item_id"])
    pool = pool[pool.groupby("user_id").cumcount() < n]
    return schemas.conform(
        pool.assign(rank=pool.groupby("user_id").cumcount() + 1), schemas.RECOMMENDATIONS
    )


def champion_parts(settings: Settings) -> tuple[ALSModel | None, Reranker | None, dict[str, str]]:
    """The `champion` ALS and reranker from the registry (None where there is none yet)."""
    versions = champion_versions(settings)
    als, reranker = pinned_parts(settings, versions)
    return als, reranker, registry_names(versions)


def champion_versions(settings: Settings) -> dict[str, int]:
    """The registry versions `champion` points at, by model kind (absent where there is none)."""
    found = {
        kind: registry.alias_version(settings, kind, registry.CHAMPION)
        for kind in ("als", "reranker")
    }
    return {kind: version for kind, version in found.items() if version is not None}


def pinned_parts(
    settings: Settings, versions: dict[str, int]
) -> tuple[ALSModel | None, Reranker | None]:
    """The ALS and reranker of exactly these registry versions (None where not given)."""
    als = reranker = None
    if "als" in versions:
        als = ALSModel.load(registry.download(settings, "als", str(versions["als"]))[0])
    if "reranker" in versions:
        reranker = Reranker.load(
            registry.download(settings, "reranker", str(versions["reranker"]))[0]
        )
    return als, reranker


def registry_names(versions: dict[str, int]) -> dict[str, str]:
    return {
        kind: f"{registry.registered_name(kind)} v{version} (@{registry.CHAMPION})"
        for kind, version in versions.items()
    }


def prepare_scoring(
    interval_end: datetime, settings: Settings | None = None, shards: int | None = None
) -> ScorePlan:
    """Write what every shard of the batch needs, once; `shards` defaults to the setting.

    Removes shard files an earlier run of the batch left (perhaps with another shard count), so
    the batch's `recs` table is exactly the shards of this plan once they have all run.
    """
    settings = settings or get_settings()
    shards = shards or settings.score_shards
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    part = {"batch": batch}
    interactions = lake.read("features/interactions", part, "part", filters=pc.field("weight") > 0)
    users = np.sort(interactions["user_id"].unique())
    del interactions
    lake.remove("recs", part)
    lake.write(
        pd.DataFrame({"user_id": users, "shard": user_shard(users, shards)}),
        USERS_TABLE,
        "part",
        part,
        USERS_SCHEMA,
    )
    popularity = PopularityModel.load(model_dir(settings, batch) / "popularity")
    trending = popularity.global_top(settings.fallback_n)
    trending = trending.assign(rank=np.arange(1, len(trending) + 1))
    lake.write(trending, "recs_fallback", "part", part)
    versions = champion_versions(settings)
    if "reranker" in versions:
        events, _ = load_events(
            lake, *event_window(settings, interval_end), columns=MODEL_EVENT_COLUMNS
        )
        items = lake.read("items", part, "part", schemas.ITEMS)
        table = catalogue_item_features(events, items, interval_end)
        lake.write(table.reset_index(), RANKING_ITEM_TABLE, "part", part)
    models = {**registry_names(versions), **batch_sources(settings, batch)}
    plan = ScorePlan(batch, shards, len(users), len(trending), versions, models)
    lake.write_json(json.dumps(asdict(plan), indent=2), REPORTS, batch)
    log.info("score plan %s", plan)
    return plan


def read_plan(interval_end: datetime, settings: Settings | None = None) -> ScorePlan:
    """The batch's `ScorePlan`; `DataNotFound` before `prepare_scoring` ran."""
    settings = settings or get_settings()
    raw = json.loads(Lake(settings.lake).read_json(REPORTS, batch_key(interval_end)))
    if "shards" not in raw:
        raise DataNotFound(f"{REPORTS}/{batch_key(interval_end)}.json is not a score plan")
    return ScorePlan(**raw)


def event_window(settings: Settings, interval_end: datetime) -> tuple[datetime, datetime]:
    """The events scoring reads, the same span as training (`load_training_data`)."""
    return interval_end - timedelta(days=2 * settings.history_days), interval_end


def score_shard(
    interval_end: datetime, shard: int, shards: int, settings: Settings | None = None
) -> ShardSummary:
    """Score one shard of the batch's users; a re-run (a retried task) overwrites its one file."""
    started = time.perf_counter()
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    plan = read_plan(interval_end, settings)
    if plan.shards != shards:
        raise ValueError(f"batch {batch} was planned with {plan.shards} shards, not {shards}")
    key = shard_key(shard, shards)
    users = lake.read(
        USERS_TABLE, {"batch": batch}, "part", USERS_SCHEMA, pc.field("shard") == shard
    )["user_id"].to_numpy()
    data = shard_data(settings, interval_end, users)
    als, reranker = pinned_parts(settings, plan.versions)
    sources = CandidateModels.load(model_dir(settings, batch), als=als)
    trending = lake.read("recs_fallback", {"batch": batch}, "part")
    item_table = (
        lake.read(RANKING_ITEM_TABLE, {"batch": batch}, "part").set_index("item_id")
        if reranker is not None
        else None
    )
    loaded = time.perf_counter()
    candidates = propose(sources, data, users, settings)
    proposed = time.perf_counter()
    recs = top_n(candidates, reranker, data, settings, trending, item_table)
    del candidates
    lake.write(recs, "recs", "part", {"batch": batch, "shard": key}, schemas.RECOMMENDATIONS)
    summary = ShardSummary(
        batch,
        shard,
        shards,
        int(recs["user_id"].nunique()),
        len(recs),
        {
            "load": loaded - started,
            "candidates": proposed - loaded,
            "rerank": time.perf_counter() - proposed,
        },
    )
    log.info("scored %s", summary)
    return summary


def shard_data(settings: Settings, interval_end: datetime, users: np.ndarray) -> TrainingData:
    """The batch's training data restricted to `users`' rows; the catalogue stays whole.

    No embeddings: scoring uses the content model saved with the batch's models.
    """
    lake = Lake(settings.lake)
    part = {"batch": batch_key(interval_end)}
    mine = pc.field("user_id").isin(pa.array(users, pa.int64()))
    events, _ = load_events(
        lake, *event_window(settings, interval_end), filters=mine, columns=MODEL_EVENT_COLUMNS
    )
    return TrainingData(
        interactions=lake.read("features/interactions", part, "part", schemas.INTERACTIONS, mine),
        items=lake.read("items", part, "part", schemas.ITEMS),
        continue_reading=lake.read(
            "features/continue_reading", part, "part", schemas.CONTINUE_READING, mine
        ),
        as_of=interval_end,
        events=events,
        subscriptions=lake.read("subscriptions", part, "part", schemas.SUBSCRIPTIONS, mine),
    )


def propose(
    sources: CandidateModels, data: TrainingData, users: np.ndarray, settings: Settings
) -> pd.DataFrame:
    """`users`' candidates from every source, read and dismissed issues removed."""
    seen = seen_pairs(data.interactions).assign(_seen=True)
    candidates = generate(sources, users, data, settings.candidates_per_source)
    candidates = candidates.merge(seen, on=["user_id", "item_id"], how="left")
    return candidates[candidates["_seen"].isna()].drop(columns="_seen")


def top_n(
    candidates: pd.DataFrame,
    reranker: Reranker | None,
    data: TrainingData,
    settings: Settings,
    trending: pd.DataFrame,
    item_table: pd.DataFrame | None,
) -> pd.DataFrame:
    """The candidates' users' top-N: reranked (or the baseline blend), topped up with trending."""
    seen = seen_pairs(data.interactions)
    if reranker is None:
        candidates = candidates.assign(
            score=candidates[["continue_reading", "als_score", "content_score", "category_score"]]
            .max(axis=1)
            .fillna(0.0),
            source=candidates["reason_code"].map(SOURCE_OF_REASON),
        )
        return fill(blend(candidates, seen, settings.top_n), trending, seen, settings.top_n)
    if candidates.empty:
        return schemas.empty(schemas.RECOMMENDATIONS)
    features = ranking_features(
        candidates, data.events, data.items, data.subscriptions, data.as_of, item_table
    )
    ranked = reranker.rerank(features, settings.top_n)
    ranked = ranked.assign(source=ranked["reason_code"].map(SOURCE_OF_REASON).fillna("hybrid"))
    return fill(ranked, trending, seen, settings.top_n)


def score_users(interval_end: datetime, settings: Settings | None = None) -> ScoreSummary:
    """Every shard of the batch in this process: the CLI's and notebooks' way to score."""
    settings = settings or get_settings()
    plan = prepare_scoring(interval_end, settings)
    done = [score_shard(interval_end, s, plan.shards, settings) for s in range(plan.shards)]
    return ScoreSummary(
        plan.batch,
        plan.shards,
        sum(d.users for d in done),
        sum(d.rows for d in done),
        plan.fallback_items,
        plan.models,
    )


def read_recs_table(interval_end: datetime, settings: Settings | None = None) -> pd.DataFrame:
    """The batch's whole `recs` table: every shard of its plan, sorted by user and rank."""
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    shards = read_plan(interval_end, settings).shards
    paths = [
        lake.path("recs", {"batch": batch, "shard": shard_key(s, shards)}, "part")
        for s in range(shards)
    ]
    missing = [path for path in paths if not lake.fs.exists(path)]
    if missing:
        raise DataNotFound(f"batch {batch} is not fully scored: {missing[0]} does not exist")
    recs = lake.read_files(paths, schemas.RECOMMENDATIONS)
    return recs.sort_values(["user_id", "rank"], ignore_index=True)


def batch_sources(settings: Settings, batch: str) -> dict[str, str]:
    """The candidate sources fitted on this batch itself, named for the table's metadata."""
    content = (model_dir(settings, batch) / "content").exists()
    names = ["popularity", "continue_reading"] + (["content"] if content else [])
    return {name: f"{name} fitted on batch {batch}" for name in names}
