"""Explain one (user, item): the reranker's per-feature contributions and the candidate's reason.

Uses the same candidates, features, champion reranker and ranking function (`models.hybrid.rank`)
as `score_shard`, so the numbers are the ones behind the published rank. LightGBM's `pred_contrib`
splits the score into one additive contribution per feature plus a bias.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from features.ranking import ranking_features
from inbo.errors import InboError, UnknownUser
from inbo.lake import batch_key
from inbo.reasons import catalogue_of, reason, render
from inbo.settings import Settings, get_settings
from models.candidates import CandidateModels
from models.hybrid import propose, rank
from pipelines.score import champion_parts
from pipelines.training_data import load_training_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explanation:
    user_id: int
    item_id: int
    score: float
    rank: int | None
    """The item's place in the user's reranked list (None when it is not in the top N)."""
    proposed_by: str
    reason: str
    contributions: pd.DataFrame
    """One row per feature: its value for this pair and its contribution to the score."""


def explain_item(
    user_id: int, item_id: int, interval_end: datetime, settings: Settings | None = None
) -> Explanation:
    """Why the champion models score `item_id` for `user_id` as they do in the batch's table."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    data = load_training_data(settings, interval_end)
    if user_id not in set(data.interactions["user_id"]):
        raise UnknownUser(f"user {user_id} has no interactions in batch {batch}")
    if item_id not in set(data.items["item_id"]):
        raise InboError(f"item {item_id} is not in the catalogue of batch {batch}")
    als, reranker, _ = champion_parts(settings)
    if reranker is None:
        raise InboError("no champion reranker is registered yet: run the nightly DAG first")
    sources = CandidateModels.load(settings.model_dir(batch), als=als)
    candidates = propose(sources, data, np.array([user_id]), settings.candidates_per_source)
    ranked = rank(candidates, reranker, data, settings.top_n)
    placed = ranked.loc[ranked["item_id"] == item_id, "rank"]
    row = candidates[candidates["item_id"] == item_id]
    if row.empty:
        row = pd.DataFrame(
            {"user_id": [user_id], "item_id": [item_id], "reason_code": [""], "sources": [""]}
        )
        why = "not proposed by any source (or already read or dismissed)"
    else:
        code, ref = row["reason_code"].iloc[0], row["reason_ref"].iloc[0]
        ref = None if pd.isna(ref) else int(ref)
        why = render(reason(code).template, ref, item_id, catalogue_of(data.items))
    features = ranking_features(row, data.events, data.items, data.subscriptions, data.as_of)
    contributions = reranker.contributions(features).iloc[0]
    table = pd.DataFrame(
        {
            "value": [features.iloc[0].get(name, np.nan) for name in contributions.index],
            "contribution": contributions.to_numpy(),
        },
        index=contributions.index,
    ).sort_values("contribution", key=np.abs, ascending=False)
    return Explanation(
        user_id=user_id,
        item_id=item_id,
        score=float(contributions.sum()),
        rank=int(placed.iloc[0]) if len(placed) else None,
        proposed_by=str(row["sources"].iloc[0]) or "none",
        reason=why,
        contributions=table,
    )
