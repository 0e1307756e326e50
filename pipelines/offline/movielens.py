"""MovieLens-100k's tuned ALS and reranked ALS, as `inbo evaluate --dataset movielens-100k` runs them.

Hyperparameters and the reranker are chosen on validation carves of the training ratings only
(`holdout_split`, `tune_als`); the test ratings are only ever used to score. `RerankedALS` is
LightGBM LambdaRank over ALS and EASE (Steck 2019) candidates with genre and content features,
learned from several validation carves.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.ranking import LABEL
from models import metrics as m
from models.als import ALSModel
from models.base import CANDIDATE_COLUMNS, TrainingData, no_candidates, require_fitted
from models.evaluation import PAIR, Split, stratified_split
from models.matrix import IdMap, pair_matrix
from models.reranker import Reranker

log = logging.getLogger(__name__)


ALS_GRID: dict[str, tuple[Any, ...]] = {
    "factors": (32, 64, 128),
    "regularization": (10.0, 20.0, 40.0, 80.0, 160.0),
    "alpha": (1.0, 2.0, 5.0, 10.0, 20.0),
    "iterations": (15,),
}
"""What `tune_als` searches on MovieLens: every combination, scored by nDCG@k on validation."""

VALIDATION_RATIO = 0.75
"""Share of each item's training ratings kept for fitting when a validation split is carved out;
the rest are the validation truth (the same per-item stratification as the test split)."""

VALIDATION_SEED = 42

CANDIDATES = 100
"""Candidates per user and source that the reranker orders."""

EASE_LAMBDA = 500.0
"""L2 penalty of the EASE item-item model (Steck 2019) that adds candidates beside ALS."""

RERANKER_CARVES = 5
"""Validation carves (different seeds) whose examples the reranker learns from together."""

RERANKER_PARAMS: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 7,
    "min_child_samples": 200,
    "colsample_bytree": 0.8,
    "subsample": 0.8,
    "subsample_freq": 1,
}
"""Small, heavily regularised trees: the labels are few and noisy (chosen on a validation carve
of a validation carve, see docs/benchmarks.md)."""


def genre_vectors(items: pd.DataFrame) -> pd.DataFrame:
    """Multi-hot genre vectors by item_id: diversity = share of list pairs sharing no genre."""
    exploded = items.set_index("item_id")["tags"].explode()
    return pd.crosstab(exploded.index, exploded.to_numpy()).clip(upper=1).astype(float)


def holdout_split(
    data: TrainingData, ratio: float = VALIDATION_RATIO, seed: int = VALIDATION_SEED
) -> Split:
    """A validation problem carved from training data: per item, `1 - ratio` of its positive
    interactions become the truth and leave the training side (Microsoft's split, one level down).
    """
    positive = data.interactions[data.interactions["weight"] > 0]
    kept, held = stratified_split(positive, ratio=ratio, by="item", seed=seed)
    train = TrainingData(
        interactions=kept.reset_index(drop=True),
        items=data.items,
        continue_reading=data.continue_reading,
        as_of=data.as_of,
        embeddings=data.embeddings,
    )
    return Split(
        name="validation",
        train=train,
        truth=held[PAIR].reset_index(drop=True),
        seen=kept[PAIR].reset_index(drop=True),
    )


@dataclass(frozen=True)
class Tuned:
    """The outcome of `tune_als`: the chosen parameters and what the search saw."""

    params: dict[str, Any]
    score: float
    """nDCG@k of `params` on the validation split."""
    seconds: float
    table: pd.DataFrame
    """Every configuration tried with its validation nDCG, best first."""


def tune_als(
    data: TrainingData,
    grid: Mapping[str, Sequence[Any]] | None = None,
    k: int = m.DEFAULT_K,
) -> Tuned:
    """The ALS hyperparameters of `grid` with the best nDCG@k on `holdout_split(data)`.

    Only `data` is read: pass a split's training side and the test truth cannot influence the
    choice. Ties keep the earlier configuration of the grid.
    """
    started = time.perf_counter()
    grid = grid or ALS_GRID
    validation = holdout_split(data)
    configs = [
        dict(zip(grid.keys(), values, strict=True)) for values in itertools.product(*grid.values())
    ]
    scores = []
    for params in configs:
        model = ALSModel(**params).fit(validation.train)
        lists = als_top_k(model, validation.users, k)
        scores.append(m.ndcg_at_k(validation.truth, lists, k))
    best = int(np.argmax(scores))  # the first of equal scores
    seconds = time.perf_counter() - started
    log.info(
        "ALS tuned on validation in %.1fs over %d configurations: %s (nDCG@%d %.4f)",
        seconds,
        len(configs),
        configs[best],
        k,
        scores[best],
    )
    table = pd.DataFrame(configs).assign(ndcg_at_k=scores)
    table = table.sort_values("ndcg_at_k", ascending=False, kind="stable", ignore_index=True)
    return Tuned(configs[best], float(scores[best]), seconds, table)


def als_top_k(model: ALSModel, users: np.ndarray, k: int) -> pd.DataFrame:
    """Each known user's top `k` unseen items from the factors alone (no explanations: fast)."""
    scores, rows = als_scores(model, users)
    columns = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, columns, axis=1)
    keep = np.isfinite(top)
    return pd.DataFrame(
        {
            m.USER_COL: np.broadcast_to(model.users.ids[rows][:, None], top.shape)[keep],
            m.ITEM_COL: model.items.ids[columns][keep],
            m.SCORE_COL: top[keep],
        }
    )


def als_scores(model: ALSModel, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(known users x catalogue) ALS scores, -inf on seen and never-read items, and their rows."""
    rows = model.users.index(np.asarray(users))
    rows = rows[rows >= 0]
    factors = model.als.user_factors[rows] @ model.als.item_factors.T
    scores = np.asarray(factors, dtype=np.float64)
    seen = model.seen[rows].tocoo()
    scores[seen.row, seen.col] = -np.inf
    readers = np.bincount(model.confidence.indices, minlength=len(model.items))
    scores[:, readers == 0] = -np.inf
    return scores, rows


RERANK_FEATURES: tuple[str, ...] = (
    "als_score",
    "als_score_share",
    "als_rank",
    "ease_score",
    "ease_rank",
    "item_popularity",
    "item_popularity_rank",
    "user_activity",
    "user_mainstream",
    "genre_affinity",
    "genre_affinity_max",
    "content_similarity",
    "release_year",
    "time_gap_days",
)
"""The reranker's inputs. Counts are relative (to the busiest item, the average user), so
features learned on the validation carve keep their meaning on the fuller training data."""


@dataclass
class RerankSources:
    """Everything `RerankedALS` scores candidates with, fitted on one set of interactions.

    Dense (users x items) matrices: sized for MovieLens-scale catalogues, not for production.
    """

    als: ALSModel
    users: IdMap
    items: IdMap
    seen: sp.csr_matrix
    ease: np.ndarray
    """(items x items) EASE weights; a user's scores are their row of `seen` times it."""
    item_counts: np.ndarray
    user_counts: np.ndarray
    genres: np.ndarray
    """(items x genres) multi-hot."""
    vectors: np.ndarray
    """(items x dim) unit item embeddings; zero rows for items without one."""
    release_year: np.ndarray
    item_time: np.ndarray
    """Median interaction time per item (days since epoch; NaN without interactions)."""
    user_time: np.ndarray

    @classmethod
    def fit(
        cls, data: TrainingData, als_params: Mapping[str, Any], embeddings: pd.DataFrame
    ) -> Self:
        als = ALSModel(**als_params).fit(data)
        users, items = als.users, als.items
        positive = data.interactions[data.interactions["weight"] > 0]
        seen = pair_matrix(
            users,
            items,
            positive["user_id"].to_numpy(),
            positive["item_id"].to_numpy(),
            np.ones(len(positive)),
        )
        seen.data[:] = 1.0
        catalogue = data.items.set_index("item_id").reindex(items.ids)
        days = (positive["last_ts"] - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
        days = days / 86400.0
        return cls(
            als=als,
            users=users,
            items=items,
            seen=seen,
            ease=ease_weights(seen, EASE_LAMBDA),
            item_counts=np.asarray(seen.sum(axis=0)).ravel(),
            user_counts=np.asarray(seen.sum(axis=1)).ravel(),
            genres=_multi_hot(catalogue["tags"]),
            vectors=_unit_rows(embeddings, items),
            release_year=catalogue["published_at"].dt.year.to_numpy(dtype=float),
            item_time=days.groupby(positive["item_id"].to_numpy())
            .median()
            .reindex(items.ids)
            .to_numpy(),
            user_time=days.groupby(positive["user_id"].to_numpy())
            .median()
            .reindex(users.ids)
            .to_numpy(),
        )

    def candidates(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        """The union of each user's ALS and EASE top `n` unseen items, with every feature."""
        als, rows = als_scores(self.als, user_ids)
        ease = np.asarray(self.seen[rows] @ self.ease, dtype=np.float64)
        ease[~np.isfinite(als)] = -np.inf  # the same exclusions as ALS: seen and never read
        als_rank, ease_rank = _ranks(als), _ranks(ease)
        chosen = ((als_rank <= n) | (ease_rank <= n)) & np.isfinite(als)
        user_pos, item_pos = np.nonzero(chosen)
        scores = {
            "als_score": als[user_pos, item_pos],
            "als_score_share": als[user_pos, item_pos]
            / np.maximum(als.max(axis=1)[user_pos], 1e-9),
            "als_rank": als_rank[user_pos, item_pos].astype(float),
            "ease_score": ease[user_pos, item_pos],
            "ease_rank": ease_rank[user_pos, item_pos].astype(float),
        }
        return pd.DataFrame(
            {
                "user_id": self.users.ids[rows[user_pos]],
                "item_id": self.items.ids[item_pos],
                **scores,
                **self._pair_features(rows, user_pos, item_pos),
            }
        )

    def _pair_features(
        self, rows: np.ndarray, user_pos: np.ndarray, item_pos: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Item, user and (user, item) features of the pairs (rows[user_pos], item_pos)."""
        user_rows = rows[user_pos]
        popularity = self.item_counts / max(float(self.item_counts.max()), 1.0)
        mainstream = np.asarray(self.seen[rows] @ popularity).ravel() / np.maximum(
            self.user_counts[rows], 1
        )
        overlap = self._genre_shares(rows)[user_pos] * self.genres[item_pos]
        profile = self._profiles(rows)
        return {
            "item_popularity": popularity[item_pos],
            "item_popularity_rank": _ranks(self.item_counts[None, :])[0, item_pos]
            / len(self.items),
            "user_activity": self.user_counts[user_rows] / max(float(self.user_counts.mean()), 1.0),
            "user_mainstream": mainstream[user_pos],
            "genre_affinity": overlap.sum(axis=1)
            / np.maximum(self.genres[item_pos].sum(axis=1), 1),
            "genre_affinity_max": overlap.max(axis=1),
            "content_similarity": np.einsum("ij,ij->i", profile[user_pos], self.vectors[item_pos]),
            "release_year": self.release_year[item_pos],
            "time_gap_days": np.abs(self.item_time[item_pos] - self.user_time[user_rows]),
        }

    def _genre_shares(self, rows: np.ndarray) -> np.ndarray:
        """(users x genres): share of each user's items carrying each genre."""
        counts = np.asarray(self.seen[rows] @ self.genres)
        return counts / np.maximum(self.user_counts[rows], 1)[:, None]

    def _profiles(self, rows: np.ndarray) -> np.ndarray:
        """(users x dim): the unit mean embedding of each user's items."""
        return _unit(np.asarray(self.seen[rows] @ self.vectors))


def ease_weights(seen: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P / diag(P) with P = (X^T X + lam I)^-1, zero diagonal."""
    gram = np.asarray((seen.T @ seen).toarray(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every column within its row, highest score first (ties by column)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :], axis=1)
    return ranks


def _multi_hot(tags: pd.Series) -> np.ndarray:
    """(rows x distinct tags) 0/1 matrix of a series of tag lists."""
    exploded = tags.reset_index(drop=True).explode().dropna()
    names = pd.Index(sorted(set(exploded)))
    matrix = np.zeros((len(tags), max(len(names), 1)), dtype=np.float64)
    matrix[exploded.index.to_numpy(dtype=np.int64), names.get_indexer(exploded)] = 1.0
    return matrix


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def _unit_rows(embeddings: pd.DataFrame, items: IdMap) -> np.ndarray:
    """(items x dim) unit vectors in `items` order; zeros where an item has no embedding."""
    found = embeddings.drop_duplicates("item_id").set_index("item_id")["embedding"]
    dim = len(found.iloc[0]) if len(found) else 1
    matrix = np.zeros((len(items), dim), dtype=np.float64)
    position = items.index(found.index.to_numpy())
    known = position >= 0
    if known.any():
        matrix[position[known]] = np.stack(found.to_numpy()[known])
    return _unit(matrix)


class RerankedALS:
    """ALS (and EASE) candidates reranked by LightGBM LambdaRank, learned without the test set.

    `fit` carves a validation split from its training data (`holdout_split`), fits the sources
    on the rest, learns the reranker on which validation items the candidates contained, then
    refits the sources on all of the training data for `recommend`.
    """

    name = "als_reranker"

    def __init__(
        self,
        als_params: Mapping[str, Any],
        embeddings: pd.DataFrame,
        candidates: int = CANDIDATES,
        reranker_params: Mapping[str, Any] | None = None,
        features: Sequence[str] = RERANK_FEATURES,
        carves: int = RERANKER_CARVES,
        ratio: float = VALIDATION_RATIO,
    ) -> None:
        self.ratio = ratio
        self.als_params = dict(als_params)
        self.embeddings = embeddings
        self.n_candidates = candidates
        self.reranker_params = {**RERANKER_PARAMS, **(reranker_params or {})}
        self.features = tuple(features)
        self.carves = carves
        self.sources: RerankSources | None = None
        self.reranker = Reranker(features=self.features, **self.reranker_params)
        self.examples = pd.DataFrame()
        """The labelled candidates the reranker learned from (user ids made unique per carve)."""

    def fit(self, data: TrainingData) -> Self:
        parts = []
        for carve in range(self.carves):
            validation = holdout_split(data, self.ratio, seed=VALIDATION_SEED + carve)
            earlier = RerankSources.fit(validation.train, self.als_params, self.embeddings)
            found = earlier.candidates(validation.users, self.n_candidates)
            truth = validation.truth.assign(**{LABEL: 1})
            found = found.merge(truth, on=PAIR, how="left")
            found[LABEL] = found[LABEL].fillna(0).astype(int)
            log.info(
                "reranker examples of carve %d: %d rows, %d users, candidates hold %.1f%% of "
                "the validation truth",
                carve,
                len(found),
                found["user_id"].nunique(),
                100.0 * found[LABEL].sum() / max(len(validation.truth), 1),
            )
            # each carve's users are separate ranking groups
            parts.append(found.assign(user_id=found["user_id"] * self.carves + carve))
        examples = pd.concat(parts, ignore_index=True)
        self.examples = examples
        self.reranker = Reranker(features=self.features, **self.reranker_params).fit(examples)
        self.sources = RerankSources.fit(data, self.als_params, self.embeddings)
        return self

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        require_fitted(self.sources is not None, self.name)
        assert self.sources is not None
        candidates = self.sources.candidates(np.asarray(user_ids), self.n_candidates)
        if candidates.empty:
            return no_candidates()
        ranked = self.reranker.rerank(candidates, n)
        return ranked.assign(source=self.name, reason_code="reranked", reason_ref=pd.NA)[
            list(CANDIDATE_COLUMNS)
        ]
