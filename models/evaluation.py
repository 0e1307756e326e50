"""Offline evaluation: split the data, fit each model on the past, score its top-k on the future.

A `Split` is what a protocol produces: the `TrainingData` a model may learn from, the truth
(user, item) pairs to find, and the pairs a user has already seen, which are never recommended
and never count as truth. `evaluate` fits any number of models on one split and returns one row
per model with every chosen metric, the share of truth users served, and timings.

Protocols:

- `time_split`: the platform's own. Fit on the events before a cutoff T exactly as the nightly
  batch would (same aggregation, decay and history window), evaluate on clicks and reads in
  [T, T + window).
- `movielens_split`: Microsoft Recommenders' MovieLens-100k benchmark (see its docstring).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from inbo import schemas
from inbo.settings import Settings, get_settings
from models import metrics as m
from models.base import Scorer, TrainingData

log = logging.getLogger(__name__)

ModelFactory = Callable[[], Scorer]
"""Makes a new, unfitted model: a model class, `functools.partial(create, "als", ...)`, a lambda."""

DEFAULT_METRICS: tuple[str, ...] = (
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "map_at_k",
    "map",
    "mrr_at_k",
    "hit_rate_at_k",
    "catalogue_coverage",
    "novelty",
    "intra_list_diversity",
)

POSITIVE_EVENTS: tuple[str, ...] = ("click", "read")
"""Event types that make an item a truth item in the time split."""

PAIR = [m.USER_COL, m.ITEM_COL]


@dataclass(frozen=True)
class Split:
    """One evaluation problem: learn from `train`, find `truth`, never recommend `seen`."""

    name: str
    train: TrainingData
    truth: pd.DataFrame
    """(user_id, item_id[, relevance]): what each evaluated user went on to consume."""
    seen: pd.DataFrame
    """(user_id, item_id) pairs removed from every list before scoring."""

    @property
    def users(self) -> np.ndarray:
        """The evaluated users: everyone with a truth item, sorted."""
        return np.sort(self.truth[m.USER_COL].unique())

    @property
    def catalogue(self) -> pd.DataFrame:
        """Items a model fitted at `as_of` may recommend: published before it."""
        items = self.train.items
        return items[items["published_at"] < pd.Timestamp(self.train.as_of)]

    def item_popularity(self) -> pd.Series:
        """item_id -> number of users with a positive training interaction (novelty's counts)."""
        positive = self.train.interactions[self.train.interactions["weight"] > 0]
        return positive.groupby(m.ITEM_COL)[m.USER_COL].nunique()


def stratified_split(
    ratings: pd.DataFrame,
    ratio: float = 0.75,
    by: Literal["user", "item"] = "user",
    seed: int = 42,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Microsoft Recommenders' `python_stratified_split`, returning (train, test).

    Every row gets a uniform random number (numpy's legacy `RandomState(seed)`, the stream that
    `np.random.seed(seed); np.random.rand(n)` gives, in row order); within each user (or item)
    rows are ordered by it, and a row goes to train when its position / group size <= `ratio`.
    On the same rows in the same order this reproduces their split exactly. Both parts keep the
    input's row order.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be between 0 and 1, got {ratio}")
    column = {"user": m.USER_COL, "item": m.ITEM_COL}[by]
    draw = np.random.RandomState(seed).rand(len(ratings))
    order = np.lexsort((draw, ratings[column].to_numpy()))
    keys = ratings[column].to_numpy()[order]
    position = pd.Series(keys).groupby(keys).cumcount().to_numpy() + 1
    size = pd.Series(keys).groupby(keys).transform("size").to_numpy()
    in_train = np.empty(len(ratings), dtype=bool)
    in_train[order] = position / size <= ratio
    return ratings[in_train], ratings[~in_train]


def movielens_split(
    ratings: pd.DataFrame,
    items: pd.DataFrame,
    *,
    by: Literal["user", "item"] = "item",
    weight: Literal["rating", "binary"] = "binary",
    ratio: float = 0.75,
    seed: int = 42,
) -> Split:
    """Microsoft Recommenders' MovieLens-100k benchmark protocol.

    As their `examples/06_benchmarks/movielens.ipynb` produced the README table: the ratings in
    `u.data` order, `python_stratified_split(ratio=0.75, filter_by="item", seed=42)` (stratified
    by *item*, although the README's prose says per user; `by="user"` gives the per-user
    variant), top 10 per user with the user's training items removed, and every test rating
    relevant whatever its value (no threshold: their BPR/BiVAE/LightGCN/SAR rows evaluate the raw
    test frame). Our models learn from the training ratings as interactions with weight 1.0
    (`weight="binary"`) or the rating (`weight="rating"`); `as_of` is one second after the last
    rating or release date, so every movie is in the catalogue as in their benchmark.
    """
    train, test = stratified_split(ratings, ratio=ratio, by=by, seed=seed)
    as_of = max(ratings["ts"].max(), items["published_at"].max()) + pd.Timedelta(seconds=1)
    interactions = pd.DataFrame(
        {
            m.USER_COL: train[m.USER_COL],
            m.ITEM_COL: train[m.ITEM_COL],
            "weight": train["rating"] if weight == "rating" else 1.0,
            "events": 1,
            "last_ts": train["ts"],
            "read_fraction": 1.0,
            "is_read": True,
            "dismissed": False,
        }
    ).sort_values(PAIR)
    data = TrainingData(
        interactions=schemas.conform(interactions, schemas.INTERACTIONS),
        items=items,
        continue_reading=schemas.empty(schemas.CONTINUE_READING),
        as_of=as_of.to_pydatetime(),
    )
    truth = test[PAIR].assign(relevance=test["rating"]).reset_index(drop=True)
    return Split(
        name=f"movielens-100k/{by}-stratified/{weight}",
        train=data,
        truth=truth,
        seen=train[PAIR].reset_index(drop=True),
    )


def time_split(
    events: pd.DataFrame,
    items: pd.DataFrame,
    cutoff: datetime,
    window: timedelta,
    *,
    positive_events: Sequence[str] = POSITIVE_EVENTS,
    settings: Settings | None = None,
    subscriptions: pd.DataFrame | None = None,
    embeddings: pd.DataFrame | None = None,
) -> Split:
    """The platform protocol: fit as the nightly batch at `cutoff` T, score the next `window`.

    Training data: events in [T - history_days, T), deduplicated by event_id, aggregated with the
    batch's decay and read threshold; items published before T. Seen: every (user, item) with a
    non-impression event in that history. Truth: (user, item) pairs with a `positive_events`
    event in [T, T + window), minus seen pairs, restricted to items published before T (the
    batch cannot serve later ones) and to users with a positive training interaction.
    """
    from features.interactions import Recipe

    settings = settings or get_settings()
    start, end = pd.Timestamp(cutoff), pd.Timestamp(cutoff + window)
    events = events.drop_duplicates("event_id", keep="first")
    recipe = Recipe.from_settings(settings)
    history = recipe.window(events, cutoff)
    interactions, started = recipe.tables(history, cutoff)
    catalogue = items[items["published_at"] < start]
    seen = history.loc[history["event_type"] != "impression", PAIR].drop_duplicates()
    future = events[(events["ts"] >= start) & (events["ts"] < end)]
    truth = future.loc[future["event_type"].isin(positive_events), PAIR].drop_duplicates()
    truth = _anti_join(truth, seen)
    truth = truth[truth[m.ITEM_COL].isin(catalogue[m.ITEM_COL])]
    known = interactions.loc[interactions["weight"] > 0, m.USER_COL].unique()
    truth = truth[truth[m.USER_COL].isin(known)].sort_values(PAIR).reset_index(drop=True)
    return Split(
        name=f"time/{start:%Y-%m-%dT%H:%M}+{window.total_seconds() / 3600:g}h",
        train=TrainingData(
            interactions=interactions,
            items=catalogue.reset_index(drop=True),
            continue_reading=started,
            as_of=cutoff,
            events=events[events["ts"] < start].reset_index(drop=True),
            subscriptions=subscriptions,
            embeddings=embeddings,
        ),
        truth=truth,
        seen=seen.reset_index(drop=True),
    )


def top_k_lists(
    candidates: pd.DataFrame, users: np.ndarray, seen: pd.DataFrame, k: int
) -> pd.DataFrame:
    """Each user's top `k` distinct unseen candidates by score (ties by item_id), ranked 1..k."""
    kept = candidates[candidates[m.USER_COL].isin(users)]
    kept = _anti_join(kept[[*PAIR, m.SCORE_COL]], seen)
    return m.ranked(kept, k)


def evaluate(
    models: Mapping[str, ModelFactory],
    split: Split,
    k: int = m.DEFAULT_K,
    metrics: Sequence[str] = DEFAULT_METRICS,
    item_vectors: pd.DataFrame | pd.Series | None = None,
) -> pd.DataFrame:
    """Fit and score every model on `split`: one row per model (index `model`).

    Columns: each of `metrics` (names from `models.metrics.METRICS`), `users` evaluated,
    `user_coverage` (share of them who got a list), `fit_seconds`, `recommend_seconds`.
    Diversity uses `item_vectors` when given, else the items' categories.
    """
    unknown = [name for name in metrics if name not in m.METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(sorted(m.METRICS))}")
    rows = [
        evaluate_model(name, factory, split, k, metrics, item_vectors)
        for name, factory in models.items()
    ]
    return pd.DataFrame(rows).set_index("model")


def evaluate_model(
    name: str,
    factory: ModelFactory,
    split: Split,
    k: int = m.DEFAULT_K,
    metrics: Sequence[str] = DEFAULT_METRICS,
    item_vectors: pd.DataFrame | pd.Series | None = None,
) -> dict[str, Any]:
    """One row of `evaluate`: fit, ask for enough candidates to fill k after removing seen, score.

    Models are asked for `k + the most seen items of any evaluated user` candidates (at most the
    catalogue), so removing seen items never leaves a list short when the model has more to give.
    """
    users = split.users
    seen = split.seen[split.seen[m.USER_COL].isin(users)]
    most_seen = int(seen.groupby(m.USER_COL).size().max()) if len(seen) else 0
    n = max(k, min(k + most_seen, len(split.catalogue)))
    began = time.perf_counter()
    model = factory().fit(split.train)
    fitted = time.perf_counter()
    lists = top_k_lists(model.recommend(users, n), users, seen, k)
    done = time.perf_counter()
    row: dict[str, Any] = {"model": name}
    for metric in metrics:
        row[metric] = _score(metric, split, lists, k, item_vectors)
    row |= {
        "users": len(users),
        "user_coverage": float(np.isin(users, lists[m.USER_COL]).mean()) if len(users) else 0.0,
        "fit_seconds": fitted - began,
        "recommend_seconds": done - fitted,
    }
    log.info("evaluated %s on %s: %s", name, split.name, row)
    return row


def _score(
    metric: str,
    split: Split,
    lists: pd.DataFrame,
    k: int,
    item_vectors: pd.DataFrame | pd.Series | None,
) -> float:
    function = m.METRICS[metric]
    if metric in m.RANKING_METRICS:
        return float(function(split.truth, lists, k))
    if metric == "catalogue_coverage":
        return float(function(lists, n_items=max(len(split.catalogue), 1)))
    if metric == "novelty":
        popularity = split.item_popularity()
        return float(function(lists, popularity)) if popularity.sum() > 0 else float("nan")
    if metric == "intra_list_diversity":
        if item_vectors is not None:
            return float(function(lists, item_vectors=item_vectors))
        categories = split.train.items.set_index(m.ITEM_COL)["category"]
        return float(function(lists, item_categories=categories))
    raise ValueError(f"no way to call metric {metric!r} from a split")


def _anti_join(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Rows of `frame` whose (user_id, item_id) is not in `pairs`."""
    marked = frame.merge(pairs[PAIR].drop_duplicates().assign(_drop=True), on=PAIR, how="left")
    return marked[marked["_drop"].isna()].drop(columns="_drop")
