"""Time-decayed popularity, global and per category: the baseline every other model must beat.

An item's score is the sum of the positive, time-decayed interaction weights it received (the decay
is already in the interaction table). Users get the most popular items of the categories they
read, in proportion to how much they read each; the global list is the fallback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from models.base import CANDIDATE_COLUMNS, TrainingData, no_candidates, require_fitted

log = logging.getLogger(__name__)


class PopularityModel:
    name = "popularity"

    def __init__(self, top_categories: int = 3) -> None:
        self.top_categories = top_categories
        self.scores = pd.DataFrame(columns=["item_id", "category", "score"])
        self.affinity = pd.DataFrame(columns=["user_id", "category", "share"])
        self.fitted = False

    def fit(self, data: TrainingData) -> Self:
        published = data.items[data.items["published_at"] < pd.Timestamp(data.as_of)]
        positive = data.interactions[data.interactions["weight"] > 0]
        totals = positive.groupby("item_id")["weight"].sum().rename("score")
        scores = (
            published[["item_id", "category"]].join(totals, on="item_id").fillna({"score": 0.0})
        )
        self.scores = scores.sort_values(["score", "item_id"], ascending=[False, True]).reset_index(
            drop=True
        )
        self.affinity = category_affinity(positive, published, self.top_categories)
        self.fitted = True
        log.info(
            "popularity fitted on %d items, %d users",
            len(self.scores),
            self.affinity["user_id"].nunique(),
        )
        return self

    def refresh_users(self, interactions: pd.DataFrame, items: pd.DataFrame) -> Self:
        """Recompute the category affinity of the users in `interactions` (their whole rows).

        The hourly refresh calls this for the users active since the nightly fit: what they read
        today moves their categories, while item popularity stays the nightly's.
        """
        positive = interactions[interactions["weight"] > 0]
        fresh = category_affinity(positive, items, self.top_categories)
        kept = self.affinity[~self.affinity["user_id"].isin(interactions["user_id"].unique())]
        self.affinity = pd.concat([kept, fresh], ignore_index=True)
        return self

    def global_top(self, n: int) -> pd.DataFrame:
        """The `n` most popular items: the fallback list and the filler for thin profiles."""
        require_fitted(self.fitted, self.name)
        top = self.scores.head(n)
        return pd.DataFrame(
            {
                "item_id": top["item_id"].to_numpy(),
                "score": _normalise(top["score"].to_numpy()),
                "source": self.name,
                "reason_code": "trending",
                "reason_ref": pd.array([pd.NA] * len(top), dtype="Int64"),
            }
        )

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        """Per user: category favourites weighted by the user's share of reading in the category."""
        require_fitted(self.fitted, self.name)
        users = self.affinity[self.affinity["user_id"].isin(user_ids)]
        if users.empty:
            return no_candidates()
        ranked = self.scores.assign(
            category_rank=self.scores.groupby("category").cumcount(),
            category_score=self.scores.groupby("category")["score"].transform(
                lambda s: s / s.max() if s.max() > 0 else s
            ),
        )
        per_category = ranked[ranked["category_rank"] < n]
        candidates = users.merge(per_category, on="category")
        candidates = candidates.assign(
            score=candidates["share"] * candidates["category_score"],
            source=self.name,
            reason_code="popular_in_category",
            reason_ref=pd.array([pd.NA] * len(candidates), dtype="Int64"),
        )
        return candidates[list(CANDIDATE_COLUMNS)]

    def save(self, directory: Path) -> None:
        require_fitted(self.fitted, self.name)
        directory.mkdir(parents=True, exist_ok=True)
        self.scores.to_parquet(directory / "scores.parquet", index=False)
        self.affinity.to_parquet(directory / "affinity.parquet", index=False)
        (directory / "params.json").write_text(json.dumps({"top_categories": self.top_categories}))

    @classmethod
    def load(cls, directory: Path) -> Self:
        model = cls(**json.loads((directory / "params.json").read_text()))
        model.scores = pd.read_parquet(directory / "scores.parquet")
        model.affinity = pd.read_parquet(directory / "affinity.parquet")
        model.fitted = True
        return model


def category_affinity(positive: pd.DataFrame, items: pd.DataFrame, top: int) -> pd.DataFrame:
    """Each user's `top` categories by positive weight, with their share of that weight."""
    weights = positive.merge(items[["item_id", "category"]], on="item_id")
    per_category = weights.groupby(["user_id", "category"], as_index=False)["weight"].sum()
    per_category = per_category.sort_values(
        ["user_id", "weight", "category"], ascending=[True, False, True]
    )
    kept = per_category[per_category.groupby("user_id").cumcount() < top]
    share = kept["weight"] / kept.groupby("user_id")["weight"].transform("sum")
    return kept.assign(share=share)[["user_id", "category", "share"]].reset_index(drop=True)


def _normalise(values: np.ndarray) -> np.ndarray:
    peak = values.max() if len(values) else 0.0
    return values / peak if peak > 0 else values
