"""Offline metrics: pure functions over a truth frame, a predictions frame and `k`.

Ranking metrics follow Microsoft Recommenders (recommenders-team/recommenders,
`recommenders/evaluation/python_evaluation.py`) so our numbers compare with their published
MovieLens table:

- a user's list is their predictions ordered by `rank` ascending (or `score` descending when there
  is no `rank` column), ties broken by `item_id`, duplicates dropped, cut at `k`; positions are
  re-numbered 1..k, as their `get_top_k_items` does;
- relevance is binary: every (user, item) row of the truth is relevant (rows with `relevance <= 0`
  are dropped first when the truth has a `relevance` column);
- precision divides by `k` even when a list is shorter (their and Spark's definition);
- `map_at_k` divides by `min(|relevant|, k)` (their current `map_at_k`); `map` divides by
  `|relevant|` (their `map`, registered here as "map" = `mean_average_precision`), which is what
  the "MAP" column of their README table computed.

One deliberate difference: every metric is averaged over **all users in the truth**, a user
without any prediction scoring 0. Microsoft averages nDCG the same way but precision, recall and
MAP only over users present in both frames. The two agree whenever every truth user gets a list,
as in their benchmark and in `models.evaluation`, which also reports the share of users served.

Beyond-accuracy metrics (coverage, novelty, intra-list diversity) take the lists and what they
need to know about the catalogue. `METRICS` maps a config name to its function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

USER_COL = "user_id"
ITEM_COL = "item_id"
RANK_COL = "rank"
SCORE_COL = "score"
RELEVANCE_COL = "relevance"
DEFAULT_K = 10

RankingMetric = Callable[[pd.DataFrame, pd.DataFrame, int], float]
"""`f(truth, predictions, k) -> float`: the signature every ranking metric shares."""


def ranked(predictions: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """Each user's list as (user_id, item_id, rank) with rank 1..n, cut at `k` when given."""
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if predictions.empty:
        none = np.array([], dtype="int64")
        return pd.DataFrame({USER_COL: none, ITEM_COL: none, RANK_COL: none})
    if RANK_COL in predictions.columns:
        ordered = predictions.sort_values([USER_COL, RANK_COL, ITEM_COL], kind="stable")
    elif SCORE_COL in predictions.columns:
        ordered = predictions.sort_values(
            [USER_COL, SCORE_COL, ITEM_COL], ascending=[True, False, True], kind="stable"
        )
    else:
        raise ValueError(f"predictions need a {RANK_COL!r} or a {SCORE_COL!r} column")
    ordered = ordered.drop_duplicates([USER_COL, ITEM_COL])
    position = ordered.groupby(USER_COL, sort=False).cumcount().to_numpy() + 1
    lists = pd.DataFrame(
        {
            USER_COL: ordered[USER_COL].to_numpy(),
            ITEM_COL: ordered[ITEM_COL].to_numpy(),
            RANK_COL: position,
        }
    )
    return lists if k is None else lists[lists[RANK_COL] <= k].reset_index(drop=True)


def _relevant(truth: pd.DataFrame) -> pd.DataFrame:
    if RELEVANCE_COL in truth.columns:
        truth = truth[truth[RELEVANCE_COL] > 0]
    return truth[[USER_COL, ITEM_COL]].drop_duplicates()


def _hits(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.Series]:
    """Hit rows (user, item, rank, hit_index) of the top-k lists, and |relevant| per truth user."""
    relevant = _relevant(truth)
    hits = ranked(predictions, k).merge(relevant, on=[USER_COL, ITEM_COL])
    hits = hits.sort_values([USER_COL, RANK_COL]).reset_index(drop=True)
    hits["hit_index"] = hits.groupby(USER_COL).cumcount() + 1
    return hits, relevant.groupby(USER_COL).size()


def _over_truth_users(per_user: pd.Series, n_relevant: pd.Series) -> pd.Series:
    return per_user.reindex(n_relevant.index).fillna(0.0).astype(float)


def _user_precision(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> pd.Series:
    hits, n_relevant = _hits(truth, predictions, k)
    return _over_truth_users(hits.groupby(USER_COL).size() / k, n_relevant)


def _user_recall(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> pd.Series:
    hits, n_relevant = _hits(truth, predictions, k)
    return _over_truth_users(hits.groupby(USER_COL).size() / n_relevant, n_relevant)


def _user_ndcg(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> pd.Series:
    hits, n_relevant = _hits(truth, predictions, k)
    dcg = (1.0 / np.log2(1.0 + hits[RANK_COL])).groupby(hits[USER_COL]).sum()
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = pd.Series(ideal[np.minimum(n_relevant.to_numpy(), k) - 1], index=n_relevant.index)
    return _over_truth_users(dcg, n_relevant) / idcg


def _user_average_precision(
    truth: pd.DataFrame, predictions: pd.DataFrame, k: int, cap: bool
) -> pd.Series:
    hits, n_relevant = _hits(truth, predictions, k)
    precision_sum = (hits["hit_index"] / hits[RANK_COL]).groupby(hits[USER_COL]).sum()
    denominator = n_relevant.clip(upper=k) if cap else n_relevant
    return _over_truth_users(precision_sum, n_relevant) / denominator


def _user_map_at_k(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> pd.Series:
    return _user_average_precision(truth, predictions, k, cap=True)


def _user_map(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> pd.Series:
    return _user_average_precision(truth, predictions, k, cap=False)


def _user_mrr(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> pd.Series:
    hits, n_relevant = _hits(truth, predictions, k)
    return _over_truth_users(1.0 / hits.groupby(USER_COL)[RANK_COL].min(), n_relevant)


def _user_hit_rate(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> pd.Series:
    hits, n_relevant = _hits(truth, predictions, k)
    return _over_truth_users(hits.groupby(USER_COL).size().clip(upper=1), n_relevant)


def _mean(per_user: pd.Series) -> float:
    return float(per_user.mean()) if len(per_user) else 0.0


def precision_at_k(truth: pd.DataFrame, predictions: pd.DataFrame, k: int = DEFAULT_K) -> float:
    """Mean over truth users of hits@k / k (a list shorter than k cannot reach 1)."""
    return _mean(_user_precision(truth, predictions, k))


def recall_at_k(truth: pd.DataFrame, predictions: pd.DataFrame, k: int = DEFAULT_K) -> float:
    """Mean over truth users of hits@k / |relevant| (reaches 1 only when |relevant| <= k)."""
    return _mean(_user_recall(truth, predictions, k))


def ndcg_at_k(truth: pd.DataFrame, predictions: pd.DataFrame, k: int = DEFAULT_K) -> float:
    """Mean over truth users of DCG@k / IDCG@k with binary relevance.

    DCG@k = sum over hits at position r <= k of 1 / log2(1 + r); IDCG@k is the DCG of a list with
    its first min(|relevant|, k) positions relevant. (Microsoft's default natural log cancels out.)
    """
    return _mean(_user_ndcg(truth, predictions, k))


def map_at_k(truth: pd.DataFrame, predictions: pd.DataFrame, k: int = DEFAULT_K) -> float:
    """Mean over truth users of AP@k = sum over hits (j-th hit at position r) of (j / r), divided
    by min(|relevant|, k). Microsoft's current `map_at_k` (Spark's meanAveragePrecisionAt)."""
    return _mean(_user_map_at_k(truth, predictions, k))


def mean_average_precision(
    truth: pd.DataFrame, predictions: pd.DataFrame, k: int = DEFAULT_K
) -> float:
    """As `map_at_k` but divided by |relevant|: Microsoft's `map`, the "MAP" of their README table
    (registered as "map")."""
    return _mean(_user_map(truth, predictions, k))


def mrr_at_k(truth: pd.DataFrame, predictions: pd.DataFrame, k: int = DEFAULT_K) -> float:
    """Mean over truth users of 1 / position of the first hit in the top k (0 without a hit)."""
    return _mean(_user_mrr(truth, predictions, k))


def hit_rate_at_k(truth: pd.DataFrame, predictions: pd.DataFrame, k: int = DEFAULT_K) -> float:
    """Share of truth users with at least one relevant item in their top k."""
    return _mean(_user_hit_rate(truth, predictions, k))


_PER_USER: dict[str, Callable[[pd.DataFrame, pd.DataFrame, int], pd.Series]] = {
    "precision_at_k": _user_precision,
    "recall_at_k": _user_recall,
    "ndcg_at_k": _user_ndcg,
    "map_at_k": _user_map_at_k,
    "map": _user_map,
    "mrr_at_k": _user_mrr,
    "hit_rate_at_k": _user_hit_rate,
}


def per_user(truth: pd.DataFrame, predictions: pd.DataFrame, k: int = DEFAULT_K) -> pd.DataFrame:
    """Every ranking metric per truth user (index `user_id`): slice it by segment, plot it."""
    return pd.DataFrame({name: f(truth, predictions, k) for name, f in _PER_USER.items()})


def _lists(predictions: pd.DataFrame, k: int | None) -> pd.DataFrame:
    if k is None and RANK_COL not in predictions.columns and SCORE_COL not in predictions.columns:
        return predictions[[USER_COL, ITEM_COL]].drop_duplicates()
    return ranked(predictions, k)


def catalogue_coverage(predictions: pd.DataFrame, n_items: int, k: int | None = None) -> float:
    """Distinct items recommended to anyone / `n_items` in the catalogue.

    Microsoft's `catalog_coverage` divides by the distinct items of the training data; pass that
    count as `n_items` to reproduce it.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, got {n_items}")
    return float(_lists(predictions, k)[ITEM_COL].nunique() / n_items)


def novelty(predictions: pd.DataFrame, item_popularity: pd.Series, k: int | None = None) -> float:
    """Mean self-information -log2 p(i) over all recommended (user, item) rows.

    `item_popularity` maps item_id -> interaction count in the training data, and
    p(i) = count(i) / sum of counts (Castells et al.'s item choice model, as in Microsoft's
    `novelty`). Items with no count, never seen in training, are counted once: the most novel an
    item can be, rather than Microsoft's silent 0.
    """
    total = float(item_popularity.sum())
    if total <= 0:
        raise ValueError("item_popularity must hold positive interaction counts")
    items = _lists(predictions, k)[ITEM_COL]
    if items.empty:
        return 0.0
    counts = items.map(item_popularity).fillna(0.0).clip(lower=1.0).astype(float)
    return float((-np.log2(counts / total)).mean())


def intra_list_diversity(
    predictions: pd.DataFrame,
    item_vectors: pd.DataFrame | pd.Series | None = None,
    item_categories: pd.Series | None = None,
    k: int | None = None,
) -> float:
    """Mean over lists of 1 - mean pairwise cosine similarity of the list's items.

    `item_vectors`: a frame indexed by item_id with one numeric column per dimension, or a
    series of item_id -> vector. Without vectors, `item_categories` (item_id -> category, or a
    list of categories) is one-hot (multi-hot) encoded: two items are then similar (1) exactly
    when they share their category, so diversity is the share of pairs in different categories.
    Items without a vector are left out; lists with fewer than two items are not scored; with no
    list scored the result is 0.0. With vectors that can be negative, the result lies in [0, 2].
    """
    vectors = _unit_vectors(item_vectors, item_categories)
    lists = _lists(predictions, k)
    lists = lists[lists[ITEM_COL].isin(vectors.index)]
    sizes = lists.groupby(USER_COL)[ITEM_COL].transform("size")
    lists = lists[sizes >= 2]
    if lists.empty:
        return 0.0
    matrix = vectors.loc[lists[ITEM_COL]].to_numpy()
    users = lists[USER_COL].to_numpy()
    sums = pd.DataFrame(matrix).groupby(users).sum().to_numpy()
    own = pd.Series((matrix**2).sum(axis=1)).groupby(users).sum().to_numpy()
    n = pd.Series(users).groupby(users).size().to_numpy()
    # sum over pairs i < j of v_i . v_j = (|sum of v|^2 - sum of |v|^2) / 2
    pair_similarity = ((sums**2).sum(axis=1) - own) / 2.0
    return float(np.mean(1.0 - pair_similarity / (n * (n - 1) / 2.0)))


def _unit_vectors(
    item_vectors: pd.DataFrame | pd.Series | None, item_categories: pd.Series | None
) -> pd.DataFrame:
    if item_vectors is not None:
        if isinstance(item_vectors, pd.Series):
            frame = pd.DataFrame(np.vstack(item_vectors.to_numpy()), index=item_vectors.index)
        else:
            frame = item_vectors
        values = frame.to_numpy(dtype=float)
    elif item_categories is not None:
        exploded = item_categories.explode().dropna()
        onehot = pd.crosstab(exploded.index, exploded.to_numpy()).clip(upper=1)
        frame, values = onehot, onehot.to_numpy(dtype=float)
    else:
        raise ValueError("intra_list_diversity needs item_vectors or item_categories")
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    unit = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
    return pd.DataFrame(unit, index=frame.index)


RANKING_METRICS: dict[str, RankingMetric] = {
    "precision_at_k": precision_at_k,
    "recall_at_k": recall_at_k,
    "ndcg_at_k": ndcg_at_k,
    "map_at_k": map_at_k,
    "map": mean_average_precision,
    "mrr_at_k": mrr_at_k,
    "hit_rate_at_k": hit_rate_at_k,
}
"""Accuracy metrics, all called as `f(truth, predictions, k)`."""

BEYOND_ACCURACY_METRICS: dict[str, Callable[..., float]] = {
    "catalogue_coverage": catalogue_coverage,
    "novelty": novelty,
    "intra_list_diversity": intra_list_diversity,
}
"""Metrics of the lists alone, called with the lists and what they need about the catalogue."""

METRICS: dict[str, Callable[..., Any]] = {**RANKING_METRICS, **BEYOND_ACCURACY_METRICS}
"""Every metric by the name config uses for it."""
