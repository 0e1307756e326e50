"""Candidate generation: every source proposes items per user, and each candidate keeps who proposed it.

Sources: ALS, content similarity, popularity in the user's categories, continue reading, and
fresh issues (new this week from a publisher the user subscribes to or a category they read). The
result has one row per (user, item) with each source's score (NaN where it did not propose the
item), the number of sources, and the reason of the most telling source, ready for the reranker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from inbo.reasons import PRIORITY
from models.als import ALSModel
from models.base import TrainingData
from models.content import ContentModel
from models.continue_reading import ContinueReadingModel
from models.popularity import PopularityModel

log = logging.getLogger(__name__)

SCORE_COLUMNS = {
    "als": "als_score",
    "content": "content_score",
    "popularity": "category_score",
    "continue_reading": "continue_reading",
}

FRESH_DAYS = 7
PROPOSAL_COLUMNS = ["user_id", "item_id", "score", "reason_code", "reason_ref", "column"]
"""A source's proposals as `_combine` takes them; `reason_ref` is null for sources without one."""
FRESH_COLUMNS = ["item_id", "score", "reason_code"]
"""What each fresh issue brings to its (user, issue) rows, built once per issue."""


@dataclass
class CandidateModels:
    """The fitted sources of one batch (ALS and content are optional: a cold start has neither)."""

    popularity: PopularityModel
    continue_reading: ContinueReadingModel
    als: ALSModel | None = None
    content: ContentModel | None = None

    @classmethod
    def fit(
        cls, data: TrainingData, als_params: dict[str, Any] | None = None, content: bool = True
    ) -> Self:
        """Fit every source on `data`; content only when the batch has embeddings."""
        return cls(
            popularity=PopularityModel().fit(data),
            continue_reading=ContinueReadingModel().fit(data),
            als=ALSModel(**(als_params or {})).fit(data),
            content=ContentModel().fit(data) if content and data.embeddings is not None else None,
        )

    def save(self, directory: Path) -> None:
        for name in ("popularity", "continue_reading", "als", "content"):
            model = getattr(self, name)
            if model is not None:
                model.save(directory / name)

    @classmethod
    def load(cls, directory: Path, als: ALSModel | None = None) -> Self:
        """The sources saved in `directory`; `als` replaces the saved ALS (e.g. the champion)."""
        return cls(
            popularity=PopularityModel.load(directory / "popularity"),
            continue_reading=ContinueReadingModel.load(directory / "continue_reading"),
            als=als or (ALSModel.load(directory / "als") if (directory / "als").exists() else None),
            content=ContentModel.load(directory / "content")
            if (directory / "content").exists()
            else None,
        )


def fresh_candidates(
    users: np.ndarray, data: TrainingData, affinity: pd.DataFrame, n: int
) -> pd.DataFrame:
    """Issues published in the last week from a subscribed publisher or a category the user reads.

    Score and reason are made once per fresh issue and carried through integer-key joins: at 1M
    users, building them per (user, issue) row and joining on strings was a quarter of the run.
    """
    as_of = pd.Timestamp(data.as_of)
    items = data.items
    fresh = items[
        (items["published_at"] < as_of)
        & (items["published_at"] >= as_of - timedelta(days=FRESH_DAYS))
    ]
    age_days = (as_of - fresh["published_at"]).dt.total_seconds() / 86400
    fresh = fresh.assign(score=1.0 - age_days / FRESH_DAYS)
    parts = []
    if data.subscriptions is not None and not data.subscriptions.empty:
        subs = data.subscriptions
        active = subs[
            (subs["subscribed_at"] < as_of)
            & (subs["unsubscribed_at"].isna() | (subs["unsubscribed_at"] > as_of))
        ]
        followed = active[active["user_id"].isin(users)][
            ["user_id", "publisher_id"]
        ].drop_duplicates()
        by_publisher = fresh.assign(reason_code="subscribed_publisher")
        by_publisher = _freshest(by_publisher, "publisher_id", n)
        parts.append(
            followed.merge(by_publisher[[*FRESH_COLUMNS, "publisher_id"]], on="publisher_id")
        )
    liked = affinity[affinity["user_id"].isin(users)]
    categories = pd.Index(fresh["category"].unique())
    by_category = fresh.assign(
        reason_code="new_this_week", _category=categories.get_indexer(fresh["category"])
    )
    by_category = _freshest(by_category, "_category", n)
    liked = liked[["user_id"]].assign(_category=categories.get_indexer(liked["category"]))
    parts.append(
        liked[liked["_category"] >= 0].merge(
            by_category[[*FRESH_COLUMNS, "_category"]], on="_category"
        )
    )
    found = pd.concat(parts, ignore_index=True)
    if found.empty:
        return found.reindex(columns=["user_id", "item_id", "score", "reason_code"])
    found = found.sort_values(["user_id", "score"], ascending=[True, False])
    found = found.drop_duplicates(["user_id", "item_id"])
    return found[found.groupby("user_id").cumcount() < n][
        ["user_id", "item_id", "score", "reason_code"]
    ]


def _freshest(fresh: pd.DataFrame, key: str, n: int) -> pd.DataFrame:
    """The issues of each `key` group (publisher, category) scoring at least its n-th best.

    Exact: an issue below that is beaten by n others every user of the group also gets, so it
    can never reach a user's top n; ties are kept. At 1M users it keeps the user x issue join
    from growing with the number of fresh issues.
    """
    rank = fresh.groupby(key)["score"].rank(method="min", ascending=False)
    return fresh[rank <= n]


def generate(
    models: CandidateModels, users: np.ndarray, data: TrainingData, per_source: int = 100
) -> pd.DataFrame:
    """One row per proposed (user, item): source scores, `n_sources`, `is_fresh`, `sources`, reason."""
    proposals = []
    for name, column in SCORE_COLUMNS.items():
        model = getattr(models, name)
        if model is None:
            continue
        found = model.recommend(users, per_source)
        if name == "continue_reading":
            found = found.drop(columns="score").merge(
                model.started[["user_id", "item_id", "read_fraction"]].rename(
                    columns={"read_fraction": "score"}
                ),
                on=["user_id", "item_id"],
            )
        proposals.append(found.assign(column=column))
    fresh = fresh_candidates(users, data, models.popularity.affinity, per_source // 4)
    proposals.append(fresh.assign(column="fresh_score"))
    long = pd.concat(
        [p.reindex(columns=PROPOSAL_COLUMNS) for p in proposals if not p.empty],
        ignore_index=True,
    )
    return _combine(long.astype({"reason_ref": "Int64"}), models.popularity, data)


def _combine(long: pd.DataFrame, popularity: PopularityModel, data: TrainingData) -> pd.DataFrame:
    """Pivot per-source proposals into one row per pair, choosing the most telling reason.

    The chosen reason keeps its `reason_ref`, so the published table can render its text.
    """
    keys = ["user_id", "item_id"]
    scores = long.pivot_table(index=keys, columns="column", values="score", aggfunc="max")
    scores = scores.reindex(columns=[*SCORE_COLUMNS.values(), "fresh_score"])
    codes, names = pd.factorize(long["reason_code"], sort=True)
    if len(names) > 62 or (codes < 0).any():
        raise ValueError(f"cannot tell {len(names)} reason codes (or a missing one) apart")
    priority = names.map(PRIORITY).fillna(len(PRIORITY))
    users, items = long["user_id"].to_numpy(), long["item_id"].to_numpy()
    order = np.lexsort((priority.to_numpy()[codes], items, users))
    first = np.r_[True, (np.diff(users[order]) != 0) | (np.diff(items[order]) != 0)]
    best = long[[*keys, "reason_code", "reason_ref"]].take(order[first])
    frame = best.set_index(keys).join(scores)
    frame["sources"] = pd.array(joined_codes(codes[order], first, names), dtype="str")
    frame = frame.reset_index()
    global_score = popularity.scores.set_index("item_id")["score"]
    peak = float(global_score.max()) if len(global_score) else 0.0
    frame["popularity_score"] = frame["item_id"].map(
        global_score / peak if peak > 0 else global_score
    )
    published = data.items.set_index("item_id")["published_at"]
    age = pd.Timestamp(data.as_of) - frame["item_id"].map(published)
    frame["is_fresh"] = (age <= timedelta(days=FRESH_DAYS)).astype(float)
    frame["n_sources"] = (
        frame[[*SCORE_COLUMNS.values(), "fresh_score"]].notna().sum(axis=1).astype(float)
    )
    log.info("candidates: %d rows for %d users", len(frame), frame["user_id"].nunique())
    return frame.drop(columns="fresh_score")


def joined_codes(codes: np.ndarray, first: np.ndarray, names: pd.Index) -> np.ndarray:
    """Each group's distinct `names[codes]`, sorted and comma-joined; groups start at `first`.

    A bitmask of codes per group, then one string per distinct mask: a Python join per (user,
    item) pair was most of candidate generation's time. `names` must be sorted.
    """
    masks = np.bitwise_or.reduceat(np.left_shift(1, codes), np.flatnonzero(first))
    distinct, inverse = np.unique(masks, return_inverse=True)
    text = [",".join(n for bit, n in enumerate(names) if mask >> bit & 1) for mask in distinct]
    return np.asarray(text, dtype=object)[inverse]


def restrict(
    data: TrainingData, cutoff: datetime, interactions: pd.DataFrame, started: pd.DataFrame
) -> TrainingData:
    """`data` as it was at `cutoff`, with the interaction tables rebuilt from earlier events."""
    events = (
        data.events[data.events["ts"] < pd.Timestamp(cutoff)] if data.events is not None else None
    )
    subs = data.subscriptions
    return TrainingData(
        interactions=interactions,
        items=data.items[data.items["published_at"] < pd.Timestamp(cutoff)],
        continue_reading=started,
        as_of=cutoff,
        events=events,
        subscriptions=subs[subs["subscribed_at"] < pd.Timestamp(cutoff)]
        if subs is not None
        else None,
        embeddings=data.embeddings,
    )
