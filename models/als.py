"""ALS collaborative filtering: people who read what you read also read these.

Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) with implicit's CPU solver,
fitted on the confidence matrix of `models.matrix.confidence`. Candidates exclude everything the
user already interacted with (read, dismissed, opened), issues with no reader yet (they have no
collaborative signal) and, because the catalogue is the items published before `as_of`, anything
newer. Each candidate is explained by the user's own issue that contributes most to its score.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from inbo.errors import ModelCannotFit
from models.base import TrainingData, no_candidates, require_fitted
from models.matrix import (
    WEIGHTINGS,
    IdMap,
    confidence,
    grow_rows,
    load_matrix,
    pair_matrix,
    save_matrix,
)

log = logging.getLogger(__name__)

REASON_CODE = "because_you_read"  # inbo.reasons: its ref is the read that explains the item
MIN_USERS = 2
MIN_ITEMS = 2
EXPLAIN_BUDGET = 1 << 12
"""(user, liked item) cells solved at once when explaining: bounds the memory of `explain`."""
FILTERED = float(np.finfo(np.float32).min) / 2
"""implicit scores a filtered item at the lowest float32; anything below this was filtered."""


class ALSModel:
    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 20.0,
        iterations: int = 15,
        alpha: float = 2.0,
        weighting: str = "none",
        random_state: int = 42,
        num_threads: int = 0,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.weighting = weighting
        self.random_state = random_state
        self.num_threads = num_threads
        self.users = IdMap(np.array([], dtype=np.int64))
        self.items = IdMap(np.array([], dtype=np.int64))
        self.weights = sp.csr_matrix((0, 0), dtype=np.float32)
        self.seen = sp.csr_matrix((0, 0), dtype=np.float32)
        self.confidence = sp.csr_matrix((0, 0), dtype=np.float32)
        self.als = self._solver()

    @property
    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "alpha": self.alpha,
            "weighting": self.weighting,
            "random_state": self.random_state,
            "num_threads": self.num_threads,
        }

    def _solver(self) -> AlternatingLeastSquares:
        # alpha is applied by `confidence` (1 + alpha * w), so implicit's own alpha stays 1
        with threadpool_limits(1, "blas"):
            return AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=1.0,
                iterations=self.iterations,
                random_state=self.random_state,
                num_threads=self.num_threads,
            )

    def fit(self, data: TrainingData) -> Self:
        """Factorise the confidence matrix of the interactions on the catalogue before `as_of`."""
        self._index(data)
        _check_can_fit(self.confidence)
        self.als = self._solver()
        with threadpool_limits(1, "blas"):
            self.als.fit(self.confidence, show_progress=False)
        log.info(
            "als fitted: %d users x %d items, %d positive pairs, params %s",
            len(self.users),
            len(self.items),
            self.confidence.nnz,
            self.params,
        )
        return self

    def _index(self, data: TrainingData) -> None:
        """The batch's catalogue, id maps and matrices: everything but the factors."""
        catalogue = data.items[data.items["published_at"] < pd.Timestamp(data.as_of)]
        catalogue = catalogue.sort_values("item_id")
        self.items = IdMap(catalogue["item_id"].to_numpy())
        interactions = self._on_catalogue(data.interactions)
        self.users = IdMap(np.unique(interactions["user_id"].to_numpy()))
        self.weights = self._pairs(interactions, interactions["weight"].to_numpy())
        self.seen = self._pairs(interactions, _seen_flags(interactions))
        self.confidence = confidence(self.weights, self.alpha, self.weighting)

    def _on_catalogue(self, interactions: pd.DataFrame) -> pd.DataFrame:
        known = self.items.index(interactions["item_id"].to_numpy()) >= 0
        if not known.all():
            log.warning(
                "als ignores %d interactions on items outside the catalogue (unknown or "
                "published after as_of); check the items table of the batch",
                int((~known).sum()),
            )
        return interactions[known]

    def _pairs(self, frame: pd.DataFrame, values: np.ndarray) -> sp.csr_matrix:
        return pair_matrix(
            self.users,
            self.items,
            frame["user_id"].to_numpy(),
            frame["item_id"].to_numpy(),
            values,
        )

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        """Up to `n` unseen items per known user, best first, each explained by one of their reads."""
        require_fitted(self.als.item_factors is not None, self.name)
        rows = self._answerable(user_ids)
        if len(rows) == 0 or n <= 0:
            return no_candidates()
        with threadpool_limits(1, "blas"):
            ids, scores = self.als.recommend(
                rows,
                self.seen[rows],
                N=min(n, len(self.items)),
                filter_already_liked_items=True,
                filter_items=self._cold_items(),
            )
            because = explain(
                self.als.item_factors, self.regularization, self.confidence[rows], ids
            )
        keep = scores > FILTERED
        users = np.broadcast_to(rows[:, None], ids.shape)[keep]
        return pd.DataFrame(
            {
                "user_id": self.users.ids[users],
                "item_id": self.items.ids[ids[keep]],
                "score": scores[keep].astype(np.float64),
                "source": self.name,
                "reason_code": REASON_CODE,
                "reason_ref": self.items.ids[because[keep]],
            }
        )

    def _answerable(self, user_ids: np.ndarray) -> np.ndarray:
        """Rows of the users the model knows and has at least one positive interaction for."""
        rows = self.users.index(np.unique(np.asarray(user_ids, dtype=np.int64)))
        rows = rows[rows >= 0]
        return rows[np.diff(self.confidence.indptr)[rows] > 0]

    def _cold_items(self) -> np.ndarray | None:
        """Items nobody interacted with positively: zero factors, no collaborative signal."""
        readers = np.bincount(self.confidence.indices, minlength=len(self.items))
        cold = np.flatnonzero(readers == 0)
        return cold if len(cold) else None

    def similar_items(self, item_id: int, k: int = 10) -> pd.DataFrame:
        """The `k` items closest to `item_id` by cosine of their factors; empty if it is unknown."""
        index = int(self.items.index(np.array([item_id]))[0])
        cold = self._cold_items()
        if index < 0 or (cold is not None and index in cold):
            return pd.DataFrame({"item_id": np.array([], np.int64), "score": np.array([])})
        with threadpool_limits(1, "blas"):
            ids, scores = self.als.similar_items(
                index, N=min(k + 1, len(self.items)), filter_items=cold
            )
        keep = (ids != index) & (scores > FILTERED)
        return pd.DataFrame(
            {"item_id": self.items.ids[ids[keep]][:k], "score": scores[keep][:k].astype(np.float64)}
        )

    def recalculate_users(self, new: pd.DataFrame) -> Self:
        """Fold new interactions in: re-solve only their users' factors, items stay fixed.

        `new` has `user_id`, `item_id`, `weight` and optionally `is_read`, `dismissed`; weights add
        to the stored ones and unknown users are appended. This is implicit's `recalculate_user`
        path (an exact least-squares solve against the fixed item factors), with the result kept.
        """
        new = self._on_catalogue(new)
        if new.empty:
            return self
        self.users = self.users.extend(new["user_id"].to_numpy())
        self.weights = grow_rows(self.weights, len(self.users)) + self._pairs(
            new, new["weight"].to_numpy()
        )
        self.seen = grow_rows(self.seen, len(self.users)).maximum(
            self._pairs(new, _seen_flags(new))
        )
        self.confidence = confidence(self.weights, self.alpha, self.weighting)
        rows = self.users.index(pd.unique(new["user_id"].to_numpy()))
        with threadpool_limits(1, "blas"):
            self.als.partial_fit_users(rows, self.confidence[rows])
        log.info("als recalculated %d users from %d new interactions", len(rows), len(new))
        return self

    def refit_users(self, rows: pd.DataFrame) -> Self:
        """Replace the whole interaction rows of the users in `rows` and re-solve their factors.

        `rows` holds every interaction of those users (`user_id`, `item_id`, `weight`, optionally
        `is_read`, `dismissed`), e.g. their rows rebuilt at a later moment. Unlike
        `recalculate_users` nothing adds up, so it does not matter which batch the model was
        trained on or how often it is called: the same rows give the same factors. Items stay
        fixed (implicit's recalculate-user solve).
        """
        users = pd.unique(rows["user_id"].to_numpy())
        rows = self._on_catalogue(rows)
        self.users = self.users.extend(users)
        positions = self.users.index(users)
        keep = np.ones(len(self.users), dtype=np.float32)
        keep[positions] = 0.0
        cleared = sp.diags(keep, format="csr")
        self.weights = cleared @ grow_rows(self.weights, len(self.users)) + self._pairs(
            rows, rows["weight"].to_numpy()
        )
        self.seen = (cleared @ grow_rows(self.seen, len(self.users))).maximum(
            self._pairs(rows, _seen_flags(rows))
        )
        self.confidence = confidence(self.weights, self.alpha, self.weighting)
        with threadpool_limits(1, "blas"):
            self.als.partial_fit_users(positions, self.confidence[positions])
        log.info("als refitted %d users from %d interactions", len(positions), len(rows))
        return self

    def recalculate_user(self, user_id: int, new_items: pd.DataFrame) -> Self:
        """`recalculate_users` for one user; `new_items` has `item_id`, `weight`."""
        return self.recalculate_users(new_items.assign(user_id=user_id))

    def save(self, directory: Path) -> None:
        require_fitted(self.als.item_factors is not None, self.name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "params.json").write_text(json.dumps(self.params, indent=2))
        self.users.save(directory / "user_ids.npy")
        self.items.save(directory / "item_ids.npy")
        np.save(directory / "user_factors.npy", self.als.user_factors, allow_pickle=False)
        np.save(directory / "item_factors.npy", self.als.item_factors, allow_pickle=False)
        save_matrix(directory / "weights.npz", self.weights)
        save_matrix(directory / "seen.npz", self.seen)

    @classmethod
    def load(cls, directory: Path) -> Self:
        model = cls(**json.loads((directory / "params.json").read_text()))
        model.users = IdMap.load(directory / "user_ids.npy")
        model.items = IdMap.load(directory / "item_ids.npy")
        model.weights = load_matrix(directory / "weights.npz")
        model.seen = load_matrix(directory / "seen.npz")
        model.confidence = confidence(model.weights, model.alpha, model.weighting)
        model.als.user_factors = np.load(directory / "user_factors.npy", allow_pickle=False)
        model.als.item_factors = np.load(directory / "item_factors.npy", allow_pickle=False)
        return model


def _seen_flags(frame: pd.DataFrame) -> np.ndarray:
    """1 where the user already met the item: any non-zero weight, a read or a dismissal."""
    seen = frame["weight"].to_numpy() != 0
    for column in ("is_read", "dismissed"):
        if column in frame:
            seen |= frame[column].to_numpy(dtype=bool)
    return seen.astype(np.float32)


def _check_can_fit(matrix: sp.csr_matrix) -> None:
    users = int(np.count_nonzero(np.diff(matrix.indptr)))
    items = len(np.unique(matrix.indices))
    if users < MIN_USERS or items < MIN_ITEMS:
        raise ModelCannotFit(
            f"ALS cannot fit: {users} users and {items} catalogue items have positive "
            f"interactions, it needs at least {MIN_USERS} and {MIN_ITEMS}; "
            "check the batch's interaction and items tables"
        )


def explain(
    item_factors: np.ndarray, regularization: float, liked: sp.csr_matrix, recommended: np.ndarray
) -> np.ndarray:
    """For each user (row of `liked`) and recommended item, the liked item contributing most.

    Hu, Koren & Volinsky (2008), section 5: with W_u = (Y^T C_u Y + reg I)^-1, the score of item i
    is sum_j c_uj (W_u y_i)^T y_j over the user's items j; the same decomposition as implicit's
    per-pair `explain`, solved for batches of users of similar history length at once.
    """
    factors = item_factors.astype(np.float64)
    gram = factors.T @ factors + regularization * np.eye(factors.shape[1])
    lengths = np.diff(liked.indptr)
    order = np.argsort(lengths, kind="stable")
    because = np.empty(recommended.shape, dtype=np.int64)
    for chunk in _chunks(lengths[order], EXPLAIN_BUDGET):
        rows = order[chunk]
        because[rows] = _explain_batch(factors, gram, liked[rows], recommended[rows])
    return because


def _chunks(sorted_lengths: np.ndarray, budget: int) -> Iterator[slice]:
    """Consecutive slices whose users x longest history stays within `budget` (one user at least)."""
    start = 0
    for end in range(1, len(sorted_lengths) + 1):
        last = end == len(sorted_lengths)
        if last or (end + 1 - start) * max(int(sorted_lengths[end]), 1) > budget:
            yield slice(start, end)
            start = end


def _explain_batch(
    factors: np.ndarray, gram: np.ndarray, liked: sp.csr_matrix, recommended: np.ndarray
) -> np.ndarray:
    items, conf = _padded(liked)
    mine = factors[items]  # (users, history, k); padding has confidence 0 and adds nothing
    a = gram + np.matmul(mine.transpose(0, 2, 1) * np.maximum(conf - 1.0, 0.0)[:, None, :], mine)
    weighted = np.linalg.solve(a, mine.transpose(0, 2, 1))  # W_u y_j, (users, k, history)
    contributions = np.matmul(factors[recommended], weighted) * conf[:, None, :]
    contributions = np.where(conf[:, None, :] > 0, contributions, -np.inf)
    return np.take_along_axis(items, contributions.argmax(axis=2), axis=1)


def _padded(rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Each row's column indices and values, left-aligned and zero-padded to the longest row."""
    lengths = np.diff(rows.indptr)
    width = max(int(lengths.max(initial=0)), 1)
    row = np.repeat(np.arange(len(lengths)), lengths)
    column = np.arange(rows.nnz) - np.repeat(rows.indptr[:-1], lengths)
    items = np.zeros((len(lengths), width), dtype=np.int64)
    values = np.zeros((len(lengths), width), dtype=np.float64)
    items[row, column] = rows.indices
    values[row, column] = rows.data
    return items, values
