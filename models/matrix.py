"""Sparse user x item matrices for the factorisation models, and the id mappings behind them.

Our ids are sparse int64s; implicit wants dense row and column indices. `IdMap` is the one
translation between the two, saved next to the factors so a loaded model answers in our ids.
`confidence` turns the interaction table's signed weights into the confidence matrix ALS fits:
dismissals and other negative weights drop out, the rest become `1 + alpha * weight`, optionally
after BM25 or TF-IDF weighting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, tfidf_weight

log = logging.getLogger(__name__)

WEIGHTINGS: tuple[str, ...] = ("none", "bm25", "tfidf")
"""How positive weights are reshaped before `1 + alpha * weight`; see `confidence`."""

BM25_K1 = 100.0
BM25_B = 0.8


class IdMap:
    """Our int64 ids <-> dense indices 0..n-1, in the order given (new ids are appended)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self._lookup = pd.Index(self.ids)
        if not self._lookup.is_unique:
            raise ValueError("IdMap ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, ids: np.ndarray) -> np.ndarray:
        """Dense indices of `ids`; -1 where an id is unknown."""
        return np.asarray(self._lookup.get_indexer(np.asarray(ids, dtype=np.int64)), dtype=np.int64)

    def extend(self, ids: np.ndarray) -> IdMap:
        """This map with the unknown ones among `ids` appended; existing indices do not move."""
        unknown = pd.unique(np.asarray(ids, dtype=np.int64))
        unknown = unknown[self.index(unknown) < 0]
        return IdMap(np.concatenate([self.ids, unknown])) if len(unknown) else self

    def save(self, path: Path) -> None:
        np.save(path, self.ids, allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> Self:
        return cls(np.load(path, allow_pickle=False))


def pair_matrix(
    users: IdMap, items: IdMap, user_ids: np.ndarray, item_ids: np.ndarray, values: np.ndarray
) -> sp.csr_matrix:
    """A users x items CSR matrix of `values` summed per pair; unknown ids and zero sums drop out."""
    rows, cols = users.index(user_ids), items.index(item_ids)
    known = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (np.asarray(values, dtype=np.float32)[known], (rows[known], cols[known])),
        shape=(len(users), len(items)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def confidence(weights: sp.csr_matrix, alpha: float, weighting: str = "none") -> sp.csr_matrix:
    """The confidence matrix: positive weights only, reshaped by `weighting`, as `1 + alpha * w`.

    BM25 and TF-IDF follow implicit's convention of weighting the items x users matrix: a user who
    reads many issues counts less per issue, and (BM25) a popular issue's entries are damped.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    positive = weights.multiply(weights > 0).tocsr().astype(np.float32)
    if weighting == "bm25":
        positive = sp.csr_matrix(bm25_weight(positive.T, K1=BM25_K1, B=BM25_B).T)
    elif weighting == "tfidf":
        positive = sp.csr_matrix(tfidf_weight(positive.T).T)
    positive.data[~(positive.data > 0)] = 0.0  # an idf <= 0 (a user who read nearly all) drops out
    positive.eliminate_zeros()
    positive.data = (1.0 + alpha * positive.data).astype(np.float32)
    return positive.astype(np.float32)


def grow_rows(matrix: sp.csr_matrix, rows: int) -> sp.csr_matrix:
    """`matrix` with empty rows appended up to `rows` rows."""
    if rows == matrix.shape[0]:
        return matrix
    indptr = np.concatenate([matrix.indptr, np.full(rows - matrix.shape[0], matrix.indptr[-1])])
    return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=(rows, matrix.shape[1]))


def save_matrix(path: Path, matrix: sp.csr_matrix) -> None:
    sp.save_npz(path, matrix, compressed=True)


def load_matrix(path: Path) -> sp.csr_matrix:
    return sp.csr_matrix(sp.load_npz(path))
