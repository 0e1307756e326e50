"""The full pipeline as one recommender: candidates from every source, reranked by LightGBM.

`fit` fits the candidate sources on everything before `as_of`, and trains the reranker on what
users were shown in the last `label_days` before `as_of`, featurised with sources fitted on the
data before that window, so no label leaks into a feature. Evaluation, the nightly scoring, the
hourly refresh and `inbo explain` use the same `propose` and `rank`, so the offline figures
describe what gets published.
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
from inbo import schemas
from inbo.errors import NoPositiveExamples
from inbo.reasons import PRIORITY, SOURCE_OF
from models.base import CANDIDATE_COLUMNS, TrainingData
from models.candidates import SCORE_COLUMNS, CandidateModels, generate, restrict
from models.reranker import Reranker

log = logging.getLogger(__name__)


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


def propose(
    models: CandidateModels, data: TrainingData, users: np.ndarray, per_source: int
) -> pd.DataFrame:
    """`users`' candidates from every source, read and dismissed issues removed."""
    seen = seen_pairs(data.interactions).assign(_seen=True)
    candidates = generate(models, users, data, per_source)
    candidates = candidates.merge(seen, on=["user_id", "item_id"], how="left")
    return candidates[candidates["_seen"].isna()].drop(columns="_seen")


def rank(
    candidates: pd.DataFrame,
    reranker: Reranker | None,
    data: TrainingData,
    n: int,
    trending: pd.DataFrame | None = None,
    item_table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The candidates' users' top `n` as `RECOMMENDATIONS` rows: the one ranking function.

    Nightly scoring, the hourly refresh, `inbo explain` and offline evaluation all rank here.
    With a reranker its order, else the baseline blend (continue reading first, then the personal
    candidates by score); lists short of `n` are topped up from `trending` when it is given.
    `item_table` holds the reranker's item features when they were computed once for all shards.
    """
    seen = seen_pairs(data.interactions)
    if reranker is None:
        ranked = blend(candidates, seen, n)
    elif candidates.empty:
        ranked = schemas.empty(schemas.RECOMMENDATIONS)
    else:
        features = ranking_features(
            candidates, data.events, data.items, data.subscriptions, data.as_of, item_table
        )
        ranked = reranker.rerank(features, n)
        ranked = schemas.conform(
            ranked.assign(source=ranked["reason_code"].map(SOURCE_OF)), schemas.RECOMMENDATIONS
        )
    return ranked if trending is None else fill(ranked, trending, seen, n)


def blend(candidates: pd.DataFrame, seen: pd.DataFrame, n: int) -> pd.DataFrame:
    """Each user's top `n` distinct items by (reason priority, score), `seen` pairs removed.

    The ranking without a reranker (a first night that could not train one): a candidate's score
    is its best source score.
    """
    scored = candidates.assign(
        score=candidates.reindex(columns=list(SCORE_COLUMNS.values())).max(axis=1).fillna(0.0),
        source=candidates["reason_code"].map(SOURCE_OF),
    )
    kept = scored.merge(seen.assign(_seen=True), on=["user_id", "item_id"], how="left")
    kept = kept[kept["_seen"].isna()].drop(columns="_seen")
    kept = kept.assign(_priority=kept["reason_code"].map(PRIORITY).fillna(len(PRIORITY)))
    kept = kept.sort_values(
        ["user_id", "_priority", "score", "item_id"], ascending=[True, True, False, True]
    ).drop_duplicates(["user_id", "item_id"])
    kept = kept[kept.groupby("user_id").cumcount() < n]
    ranked = kept.assign(rank=kept.groupby("user_id").cumcount() + 1)
    return schemas.conform(ranked.drop(columns="_priority"), schemas.RECOMMENDATIONS)


def als_only(candidates: pd.DataFrame, seen: pd.DataFrame, n: int) -> pd.DataFrame:
    """Each user's top `n` of the ALS candidates by ALS score: the "ALS only" policy."""
    column = SCORE_COLUMNS["als"]
    if column not in candidates.columns:
        return schemas.empty(schemas.RECOMMENDATIONS)
    proposed = candidates[candidates[column].notna()]
    scored = proposed.assign(score=proposed[column], source=proposed["reason_code"].map(SOURCE_OF))
    kept = scored.merge(seen.assign(_seen=True), on=["user_id", "item_id"], how="left")
    kept = kept[kept["_seen"].isna()].sort_values(
        ["user_id", "score", "item_id"], ascending=[True, False, True]
    )
    kept = kept[kept.groupby("user_id").cumcount() < n]
    ranked = kept.assign(rank=kept.groupby("user_id").cumcount() + 1)
    return schemas.conform(ranked, schemas.RECOMMENDATIONS)


def popular_only(
    users: np.ndarray, trending: pd.DataFrame, seen: pd.DataFrame, n: int
) -> pd.DataFrame:
    """The batch's trending list for each of `users`, minus what they read or hid: the
    "popularity" policy, the same list for everyone but for their own history."""
    return fill(schemas.empty(schemas.RECOMMENDATIONS), trending, seen, n, users)


def fill(
    ranked: pd.DataFrame,
    trending: pd.DataFrame,
    seen: pd.DataFrame,
    n: int,
    users: np.ndarray | None = None,
) -> pd.DataFrame:
    """`ranked` lists topped up to `n` with trending issues the user has not seen or been given;
    `users` (default: those in `ranked`) are the users whose lists are filled."""
    if users is None:
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


def learn_reranker(
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
            columns=["reason_code", "reason_ref", "sources"]
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
    are registered separately and reassembled by `pipelines.score.score_shard`, which ranks with
    the same `propose` and `rank`.
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
        self.reranker, self.examples = learn_reranker(
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
        candidates = propose(self.sources, self.data, np.asarray(user_ids), self.per_source)
        return rank(candidates, self.reranker, self.data, n)[list(CANDIDATE_COLUMNS)]
