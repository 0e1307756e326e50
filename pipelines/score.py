"""Score: every user's top-N from the champion models, with a reason on every item.

The nightly DAG's `prepare_scoring` and `score_shard` tasks.

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
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.interactions import MODEL_EVENT_COLUMNS, load_events
from features.ranking import catalogue_item_features
from inbo import schemas, tables
from inbo.errors import DataNotFound
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from inbo.shards import shard_key, user_shard
from models.als import ALSModel
from models.base import TrainingData
from models.candidates import CandidateModels
from models.hybrid import als_only, fill, popular_only, propose, rank, seen_pairs
from models.popularity import PopularityModel
from models.reranker import Reranker
from pipelines import registry
from pipelines.experiments.assignment import NO_EXPERIMENTS, Allocation
from pipelines.experiments.config import Policy, PolicyKind
from pipelines.experiments.lifecycle import table_allocation
from pipelines.publish.packing import VARIANT
from pipelines.training_data import Embeddings, event_window, load_training_data

log = logging.getLogger(__name__)


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
    experiments: dict[str, Any] = field(default_factory=dict)
    """The running experiments' allocation (`Allocation.to_json`): who is served which policy."""

    def allocation(self) -> Allocation:
        return Allocation.from_json(self.experiments)


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
        als = registry.load_als(settings, str(versions["als"]))
    if "reranker" in versions:
        reranker = registry.load_reranker(settings, str(versions["reranker"]))
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
    interactions = lake.read_batch(
        tables.INTERACTIONS, batch, pc.field("weight") > 0, columns=["user_id"]
    )
    users = np.sort(interactions["user_id"].unique())
    del interactions
    lake.remove(tables.RECS.path, part)
    lake.write_batch(
        pd.DataFrame({"user_id": users, "shard": user_shard(users, shards)}),
        tables.RECS_USERS,
        batch,
    )
    popularity = PopularityModel.load(settings.model_dir(batch) / "popularity")
    trending = popularity.global_top(settings.fallback_n)
    trending = trending.assign(rank=np.arange(1, len(trending) + 1))
    lake.write_batch(trending, tables.RECS_FALLBACK, batch)
    versions = champion_versions(settings)
    experiments = table_allocation(settings, interval_end)
    if "reranker" in versions or _pinned_rerankers(experiments):
        events, _ = load_events(
            lake, *event_window(settings, interval_end), columns=MODEL_EVENT_COLUMNS
        )
        items = lake.read_batch(tables.ITEMS, batch)
        table = catalogue_item_features(events, items, interval_end)
        lake.write_batch(table.reset_index(), tables.ITEM_RANKING, batch)
    models = {**registry_names(versions), **batch_sources(settings, batch)}
    plan = ScorePlan(
        batch, shards, len(users), len(trending), versions, models, experiments.to_json()
    )
    lake.write_json(json.dumps(asdict(plan), indent=2), tables.SCORE_PLANS, batch)
    log.info("score plan %s", plan)
    return plan


def read_plan(interval_end: datetime, settings: Settings | None = None) -> ScorePlan:
    """The batch's `ScorePlan`; `DataNotFound` before `prepare_scoring` ran."""
    settings = settings or get_settings()
    raw = json.loads(Lake(settings.lake).read_json(tables.SCORE_PLANS, batch_key(interval_end)))
    if "shards" not in raw:
        raise DataNotFound(
            f"{tables.SCORE_PLANS}/{batch_key(interval_end)}.json is not a score plan"
        )
    return ScorePlan(**raw)


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
    users = lake.read_batch(tables.RECS_USERS, batch, pc.field("shard") == shard)
    users = users["user_id"].to_numpy()
    data = load_training_data(settings, interval_end, users=users, embeddings=Embeddings.NONE)
    trending = lake.read_batch(tables.RECS_FALLBACK, batch)
    item_table = (
        lake.read_batch(tables.ITEM_RANKING, batch).set_index("item_id")
        if lake.has_batch(tables.ITEM_RANKING, batch)
        else None
    )
    als, reranker = pinned_parts(settings, plan.versions)
    sources = CandidateModels.load(settings.model_dir(batch), als=als)
    loaded = time.perf_counter()
    ranker = PolicyRanker(settings, data, sources, reranker, trending, item_table)
    recs, phases = ranker.rank(plan.allocation(), users)
    partition = {"batch": batch, "shard": key}
    lake.write(recs, tables.RECS.path, "part", partition, tables.RECS.schema)
    summary = ShardSummary(
        batch,
        shard,
        shards,
        int(recs["user_id"].nunique()),
        len(recs),
        {"load": loaded - started, **phases},
    )
    log.info("scored %s", summary)
    return summary


@dataclass(frozen=True)
class PolicyRanker:
    """What every policy ranks with: the users' data, the batch's candidate sources with the
    champion ALS and the champion reranker, the trending list and the reranker's item features.

    Nightly scoring and the hourly refresh rank here; a pinned policy swaps in its own registry
    versions.
    """

    settings: Settings
    data: TrainingData
    sources: CandidateModels
    reranker: Reranker | None
    trending: pd.DataFrame
    item_table: pd.DataFrame | None

    def rank(
        self, experiments: Allocation, users: np.ndarray
    ) -> tuple[pd.DataFrame, dict[str, float]]:
        """`users`' lists, each from the policy their variant serves (champion when they are in
        none), sorted by user and rank; and the seconds spent on candidates and on ranking."""
        _, policies = experiments.assign(users)
        parts, seconds = [], {"candidates": 0.0, "rerank": 0.0}
        for key in sorted(set(policies.tolist())):
            group = users[policies == key]
            log.info("%d users served %s", len(group), key)
            started = time.perf_counter()
            policy = _policy(key)
            candidates = self._candidates(policy, group)
            proposed = time.perf_counter()
            parts.append(self._ranked(policy, candidates, group))
            seconds["candidates"] += proposed - started
            seconds["rerank"] += time.perf_counter() - proposed
        if not parts:
            return schemas.empty(schemas.RECOMMENDATIONS), seconds
        recs = pd.concat(parts, ignore_index=True)
        return recs.sort_values(["user_id", "rank"], ignore_index=True), seconds

    def _parts(self, policy: Policy) -> tuple[CandidateModels, Reranker | None]:
        if policy.kind is not PolicyKind.PINNED:
            return self.sources, None if policy.kind is PolicyKind.BLEND else self.reranker
        versions = {"als": policy.als_version or 0}
        if policy.reranker_version is not None:
            versions["reranker"] = policy.reranker_version
        als, reranker = pinned_parts(self.settings, versions)
        return replace(self.sources, als=als), reranker

    def _candidates(self, policy: Policy, users: np.ndarray) -> pd.DataFrame | None:
        """Every source's candidates for `users`; None for a policy that needs none."""
        if policy.kind is PolicyKind.POPULARITY:
            return None
        sources, _ = self._parts(policy)
        return propose(sources, self.data, users, self.settings.candidates_per_source)

    def _ranked(
        self, policy: Policy, candidates: pd.DataFrame | None, users: np.ndarray
    ) -> pd.DataFrame:
        n = self.settings.top_n
        seen = seen_pairs(self.data.interactions)
        if candidates is None:
            return popular_only(users, self.trending, seen, n)
        if policy.kind is PolicyKind.ALS:
            return fill(als_only(candidates, seen, n), self.trending, seen, n)
        _, reranker = self._parts(policy)
        return rank(candidates, reranker, self.data, n, self.trending, self.item_table)


def plan_allocation(interval_end: datetime, settings: Settings) -> Allocation:
    """The experiments the batch's score plan placed users in; none for a batch without a plan
    (recs written by other means than `prepare_scoring`: no experiment placed those users)."""
    try:
        raw = json.loads(Lake(settings.lake).read_json(tables.SCORE_PLANS, batch_key(interval_end)))
    except DataNotFound:
        return NO_EXPERIMENTS
    return Allocation.from_json(raw.get("experiments"))


def with_variants(recs: pa.Table, experiments: Allocation) -> pa.Table:
    """`recs` with each row's `variant`: the label its user was served under (null when none)."""
    if experiments == NO_EXPERIMENTS:
        return recs
    user_ids = recs["user_id"].to_numpy()
    users, row_user = np.unique(user_ids, return_inverse=True)
    labels, _ = experiments.assign(users)
    return recs.append_column(VARIANT, pa.array(labels[row_user], pa.string()))


def _policy(key: str) -> Policy:
    """The policy a key (`Policy.key`) names."""
    if not key.startswith("pinned:"):
        return Policy(kind=PolicyKind(key))
    versions = dict(part.split("=") for part in key.removeprefix("pinned:").split(","))
    return Policy(
        kind=PolicyKind.PINNED,
        als_version=int(versions["als"]),
        reranker_version=int(versions["reranker"]) if "reranker" in versions else None,
    )


def _pinned_rerankers(experiments: Allocation) -> bool:
    return any(
        _policy(arm.policy).reranker_version is not None
        for slot in experiments.slots
        for arm in slot.arms
    )


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
        lake.path(tables.RECS.path, {"batch": batch, "shard": shard_key(s, shards)}, "part")
        for s in range(shards)
    ]
    missing = [path for path in paths if not lake.fs.exists(path)]
    if missing:
        raise DataNotFound(f"batch {batch} is not fully scored: {missing[0]} does not exist")
    recs = lake.read_files(paths, tables.RECS.schema)
    return recs.sort_values(["user_id", "rank"], ignore_index=True)


def batch_sources(settings: Settings, batch: str) -> dict[str, str]:
    """The candidate sources fitted on this batch itself, named for the table's metadata."""
    content = (settings.model_dir(batch) / "content").exists()
    names = ["popularity", "continue_reading"] + (["content"] if content else [])
    return {name: f"{name} fitted on batch {batch}" for name in names}
