"""The full pipeline as one recommender: candidates from every source, reranked by LightGBM.

`fit` fits the candidate sources on everything before `as_of`, and trains the reranker on what
users were shown in the last `label_days` before `as_of`, featurised with sources fitted on the
data before that window, so no label leaks into a feature. Evaluation and the nightly scoring use
the same `rank` function, so the offline figures describe what gets published.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Self

import numpy as np
import pandas as pd

from features.interactions import MODEL_EVENT_COLUMNS, Recipe
from features.ranking import (
    catalogue_item_features,
    impression_labels,
    ranking_features,
    training_examples,
    training_users,
)
from inbo.errors import NoPositiveExamples
from models.base import TrainingData
from models.candidates import CandidateModels, generate, restrict
from models.reranker import Reranker

log = logging.getLogger(__name__)

SOURCE_OF_REASON = {
    "continue_reading": "continue_reading",
    "because_you_read": "als",
    "similar_to_read": "content",
    "subscribed_publisher": "fresh",
    "new_this_week": "fresh",
    "popular_in_category": "popularity",
    "trending": "popularity",
}


def data_at(data: TrainingData, cutoff: datetime, recipe: Recipe) -> TrainingData:
    """`data` as the nightly batch at `cutoff` would have seen it, rebuilt from the raw events.

    The result has no raw events: the candidate sources never read them. The rebuild copies only
    the columns it reads, and every user's events, since ALS item factors and item popularity
    depend on all of them (at 1M users, copies of the full-width events ran out of memory).
    """
    if data.events is None:
        raise ValueError("the reranker needs raw events: build TrainingData with `events`")
    earlier = data.events.loc[data.events["ts"] < pd.Timestamp(cutoff), list(MODEL_EVENT_COLUMNS)]
    interactions, started = recipe.tables(earlier, cutoff)
    return restrict(replace(data, events=None), cutoff, interactions, started)


def seen_pairs(interactions: pd.DataFrame) -> pd.DataFrame:
    """Pairs never to recommend again: finished reads and dismissals."""
    mask = interactions["is_read"] | interactions["dismissed"]
    return interactions.loc[mask, ["user_id", "item_id"]]


def rank(
    models: CandidateModels,
    reranker: Reranker,
    data: TrainingData,
    users: np.ndarray,
    n: int,
    per_source: int = 100,
) -> pd.DataFrame:
    """Each user's top `n`: candidates, features at `as_of`, reranked, read/dismissed removed."""
    candidates = generate(models, users, data, per_source)
    seen = seen_pairs(data.interactions).assign(_seen=True)
    candidates = candidates.merge(seen, on=["user_id", "item_id"], how="left")
    candidates = candidates[candidates["_seen"].isna()].drop(columns="_seen")
    if candidates.empty:
        return candidates.assign(score=[], rank=[], source=[])
    features = ranking_features(candidates, data.events, data.items, data.subscriptions, data.as_of)
    ranked = reranker.rerank(features, n)
    return ranked.assign(source=ranked["reason_code"].map(SOURCE_OF_REASON).fillna("hybrid"))


def train_reranker(
    data: TrainingData,
    label_days: float,
    als_params: dict[str, Any],
    per_source: int,
    recipe: Recipe,
    reranker_params: dict[str, Any] | None = None,
    max_users: int | None = None,
) -> tuple[Reranker, pd.DataFrame]:
    """A reranker trained on the last `label_days` before `data.as_of`, and its examples.

    It learns from the users with a positive label, at most `max_users` of them: item features
    come from everyone's events, user and pair features only from the sampled users' events.
    """
    if data.events is None:
        raise ValueError("the reranker needs raw events: build TrainingData with `events`")
    cutoff = pd.Timestamp(data.as_of) - timedelta(days=label_days)
    earlier = data_at(data, cutoff.to_pydatetime(), recipe)
    sources = CandidateModels.fit(earlier, als_params)
    labels = impression_labels(data.events, data.items, cutoff, label_days, True)
    users = training_users(labels, max_users)
    if len(users) == 0:
        raise NoPositiveExamples(
            f"nobody clicked or read what they were shown in the {label_days:g} days before"
            f" {pd.Timestamp(data.as_of).isoformat()}: nothing to learn a ranking from"
        )
    log.info("reranker learns from %d users (at most %s)", len(users), max_users or "all")

    def candidates_at(moment: datetime) -> pd.DataFrame:
        return generate(sources, users, earlier, per_source).drop(
            columns=["reason_code", "reason", "reason_ref", "sources"]
        )

    examples = training_examples(
        data.events[data.events["user_id"].isin(users)],
        data.items,
        data.subscriptions,
        candidates_at,
        cutoff.to_pydatetime(),
        label_days,
        item_table=catalogue_item_features(data.events, data.items, cutoff.to_pydatetime()),
    )
    return Reranker(**(reranker_params or {})).fit(examples), examples


class HybridRecommender:
    """ALS + content + popularity + continue reading + fresh candidates, reranked by LightGBM.

    The offline-evaluation face of the pipeline (fit/recommend only): in production its parts
    are registered separately and reassembled by `pipelines.recommend.score_users`.
    """

    name = "hybrid"

    def __init__(
        self,
        als_params: dict[str, Any] | None = None,
        reranker_params: dict[str, Any] | None = None,
        label_days: float = 2.0,
        per_source: int = 100,
        recipe: Recipe | None = None,
        max_users: int | None = None,
    ) -> None:
        self.als_params = als_params or {}
        self.reranker_params = reranker_params or {}
        self.label_days = label_days
        self.per_source = per_source
        self.recipe = recipe or Recipe()
        self.max_users = max_users

    def fit(self, data: TrainingData) -> Self:
        self.sources = CandidateModels.fit(data, self.als_params)
        self.reranker, self.examples = train_reranker(
            data,
            self.label_days,
            self.als_params,
            self.per_source,
            self.recipe,
            self.reranker_params,
            self.max_users,
        )
        self.data = data
        return self

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        ranked = rank(
            self.sources, self.reranker, self.data, np.asarray(user_ids), n, self.per_source
        )
        return ranked[
            ["user_id", "item_id", "score", "source", "reason_code", "reason", "reason_ref"]
        ]
