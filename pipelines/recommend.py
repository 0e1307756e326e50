"""Score: every user's top-N from the champion models, with a reason on every item.

Candidates come from the batch's sources with the `champion` ALS from the MLflow registry, and the
`champion` reranker orders them; trending issues fill short lists. Read and dismissed issues never
appear. Without a registered reranker (a first run that could not train one) the baseline blend
is used: continue reading first, then the personal candidates by score, then trending.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from inbo import schemas
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from models.als import ALSModel
from models.candidates import REASON_PRIORITY, CandidateModels, generate
from models.hybrid import SOURCE_OF_REASON, rank, seen_pairs
from models.reranker import Reranker
from pipelines import registry
from pipelines.train import load_training_data, model_dir

log = logging.getLogger(__name__)

REPORTS = "_reports/score"


@dataclass(frozen=True)
class ScoreSummary:
    batch: str
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
    parts: dict[str, object] = {}
    used: dict[str, str] = {}
    for kind, loader in (("als", ALSModel.load), ("reranker", Reranker.load)):
        if registry.alias_version(settings, kind, registry.CHAMPION) is None:
            continue
        path, version = registry.download(settings, kind, registry.CHAMPION)
        parts[kind] = loader(path)
        used[kind] = f"{registry.registered_name(kind)} v{version} (@{registry.CHAMPION})"
    return parts.get("als"), parts.get("reranker"), used  # type: ignore[return-value]


def score_users(interval_end: datetime, settings: Settings | None = None) -> ScoreSummary:
    """Write the batch's per-user top-N and fallback list to the lake."""
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    data = load_training_data(settings, interval_end)
    als, reranker, used = champion_parts(settings)
    sources = CandidateModels.load(model_dir(settings, batch), als=als)
    interactions = data.interactions
    users = np.sort(interactions.loc[interactions["weight"] > 0, "user_id"].unique())
    seen = seen_pairs(interactions)
    trending = sources.popularity.global_top(settings.fallback_n)
    trending = trending.assign(rank=np.arange(1, len(trending) + 1))
    if reranker is not None:
        ranked = rank(
            sources, reranker, data, users, settings.top_n, settings.candidates_per_source
        )
        ranked = ranked[["user_id", "item_id", "score", "source", "reason_code", "reason", "rank"]]
    else:
        candidates = generate(sources, users, data, settings.candidates_per_source)
        candidates = candidates.assign(
            score=candidates[["continue_reading", "als_score", "content_score", "category_score"]]
            .max(axis=1)
            .fillna(0.0),
            source=candidates["reason_code"].map(SOURCE_OF_REASON),
        )
        ranked = blend(candidates, seen, settings.top_n)
    recs = fill(ranked, trending, seen, settings.top_n)
    used.update(batch_sources(sources, batch))
    lake.write(recs, "recs", "part", {"batch": batch}, schemas.RECOMMENDATIONS)
    lake.write(trending, "recs_fallback", "part", {"batch": batch})
    summary = ScoreSummary(batch, int(recs["user_id"].nunique()), len(recs), len(trending), used)
    lake.write_json(json.dumps(asdict(summary), indent=2), REPORTS, batch)
    log.info("scored %s", summary)
    return summary


def batch_sources(sources: CandidateModels, batch: str) -> dict[str, str]:
    """The candidate sources fitted on this batch itself, named for the table's metadata."""
    names = ["popularity", "continue_reading"] + (["content"] if sources.content else [])
    return {name: f"{name} fitted on batch {batch}" for name in names}
