"""Offline metrics: limits first (perfect = 1, no hit = 0, nothing to score), then hand-computed
values, then agreement with an obviously-correct per-user loop on random data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models import metrics as m

RANKING = sorted(m.RANKING_METRICS)


def frame(rows: list[tuple[int, int]], **extra: list[float]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=[m.USER_COL, m.ITEM_COL])
    return out.assign(**extra)


def lists(per_user: dict[int, list[int]]) -> pd.DataFrame:
    """Ranked predictions: each user's items in order, rank 1..n."""
    rows = [(u, i, r) for u, items in per_user.items() for r, i in enumerate(items, start=1)]
    return pd.DataFrame(rows, columns=[m.USER_COL, m.ITEM_COL, m.RANK_COL])


# --- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RANKING)
def test_a_perfect_ranking_scores_one(name: str) -> None:
    # each user has exactly k relevant items and they fill the list
    truth = frame([(1, 10), (1, 11), (1, 12), (2, 20), (2, 21), (2, 22)])
    predictions = lists({1: [10, 11, 12], 2: [22, 21, 20]})
    assert m.METRICS[name](truth, predictions, 3) == pytest.approx(1.0)


@pytest.mark.parametrize("name", RANKING)
def test_no_hit_scores_zero(name: str) -> None:
    truth = frame([(1, 10), (2, 20)])
    predictions = lists({1: [11, 12, 13], 2: [10, 21]})
    assert m.METRICS[name](truth, predictions, 3) == 0.0


@pytest.mark.parametrize("name", RANKING)
def test_empty_predictions_or_truth_score_zero(name: str) -> None:
    truth = frame([(1, 10)])
    empty = lists({})
    assert m.METRICS[name](truth, empty, 10) == 0.0
    assert m.METRICS[name](truth.iloc[:0], lists({1: [10]}), 10) == 0.0


@pytest.mark.parametrize("name", RANKING)
def test_k_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match="k must be"):
        m.METRICS[name](frame([(1, 10)]), lists({1: [10]}), 0)


# --- hand-computed values on two users, k = 3 -----------------------------------------------
#
# user 1: relevant {10, 20, 30}; list 10, 40, 20 | 30 (30 is 4th: outside k). Hits at 1 and 3.
# user 2: relevant {50, 60, 70, 80} (more than k); list 90, 50, 91. Hit at 2.

TRUTH = frame([(1, 10), (1, 20), (1, 30), (2, 50), (2, 60), (2, 70), (2, 80)])
PREDICTIONS = lists({1: [10, 40, 20, 30], 2: [90, 50, 91]})
L2, L3 = 1 / math.log2(3), 1 / math.log2(4)  # discounts at positions 2 and 3 (position 1: 1)
IDCG3 = 1 + L2 + L3  # both users have >= 3 relevant items: ideal list is 3 hits

EXPECTED = {
    # hits / k
    "precision_at_k": ((2 / 3), (1 / 3)),
    # hits / |relevant|
    "recall_at_k": ((2 / 3), (1 / 4)),
    # (1 + 1/log2 4) / IDCG3 = 1.5 / 2.1309 = 0.7039 ; (1/log2 3) / IDCG3 = 0.6309 / 2.1309 = 0.2961
    "ndcg_at_k": ((1 + L3) / IDCG3, L2 / IDCG3),
    # (1/1 + 2/3) / min(3, 3) = 0.5556 ; (1/2) / min(4, 3) = 0.1667
    "map_at_k": ((1 + 2 / 3) / 3, 0.5 / 3),
    # (1/1 + 2/3) / 3 = 0.5556 ; (1/2) / 4 = 0.125
    "map": ((1 + 2 / 3) / 3, 0.5 / 4),
    # 1 / first hit position
    "mrr_at_k": (1.0, 0.5),
    "hit_rate_at_k": (1.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hand_computed_values(name: str) -> None:
    user1, user2 = EXPECTED[name]
    per_user = m.per_user(TRUTH, PREDICTIONS, 3)[name]
    assert per_user.to_dict() == pytest.approx({1: user1, 2: user2})
    assert m.METRICS[name](TRUTH, PREDICTIONS, 3) == pytest.approx((user1 + user2) / 2)


def test_hand_computed_means() -> None:
    # precision (2/3 + 1/3) / 2 = 0.5; recall (2/3 + 1/4) / 2 = 0.4583
    assert m.precision_at_k(TRUTH, PREDICTIONS, 3) == pytest.approx(0.5)
    assert m.recall_at_k(TRUTH, PREDICTIONS, 3) == pytest.approx(11 / 24)
    # (1.5 + 0.6309) / (2 * 2.1309): the two DCGs add up to one IDCG, so exactly 0.5
    assert m.ndcg_at_k(TRUTH, PREDICTIONS, 3) == pytest.approx(0.5)
    # (0.5556 + 0.1667) / 2 = 0.3611 and (0.5556 + 0.125) / 2 = 0.3403
    assert m.map_at_k(TRUTH, PREDICTIONS, 3) == pytest.approx(13 / 36)
    assert m.mean_average_precision(TRUTH, PREDICTIONS, 3) == pytest.approx(49 / 144)
    assert m.mrr_at_k(TRUTH, PREDICTIONS, 3) == pytest.approx(0.75)


def test_a_truth_user_without_a_list_counts_as_zero() -> None:
    truth = pd.concat([TRUTH, frame([(3, 99)])])
    assert m.precision_at_k(truth, PREDICTIONS, 3) == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert m.hit_rate_at_k(truth, PREDICTIONS, 3) == pytest.approx(2 / 3)


def test_lists_for_users_outside_the_truth_are_ignored() -> None:
    extra = pd.concat([PREDICTIONS, lists({7: [10, 20, 30]})])
    assert m.ndcg_at_k(TRUTH, extra, 3) == pytest.approx(m.ndcg_at_k(TRUTH, PREDICTIONS, 3))


def test_scores_rank_like_ranks_ties_by_item_and_duplicates_count_once() -> None:
    by_score = pd.DataFrame(
        {
            m.USER_COL: [1, 1, 1, 1, 1, 2, 2, 2],
            m.ITEM_COL: [30, 20, 40, 10, 10, 91, 50, 90],
            m.SCORE_COL: [0.1, 0.5, 0.5, 0.9, 0.2, 0.1, 0.5, 0.9],
        }
    )
    # user 1 orders 10 (0.9), 20 (0.5, lower id wins the tie), 40, 30; the second 10 is dropped
    assert m.ranked(by_score, 3)[m.ITEM_COL].tolist()[:3] == [10, 20, 40]
    expected = lists({1: [10, 20, 40, 30], 2: [90, 50, 91]})
    for name in RANKING:
        assert m.METRICS[name](TRUTH, by_score, 3) == pytest.approx(
            m.METRICS[name](TRUTH, expected, 3)
        )


def test_relevance_of_zero_is_not_relevant() -> None:
    truth = frame([(1, 10), (1, 11)], relevance=[1.0, 0.0])
    assert m.recall_at_k(truth, lists({1: [10]}), 1) == 1.0


# --- beyond accuracy ------------------------------------------------------------------------


def test_catalogue_coverage_counts_distinct_recommended_items() -> None:
    predictions = lists({1: [1, 2], 2: [1, 3]})
    assert m.catalogue_coverage(predictions, n_items=10) == pytest.approx(0.3)  # {1, 2, 3} / 10
    assert m.catalogue_coverage(predictions, n_items=10, k=1) == pytest.approx(0.1)  # {1} / 10
    assert m.catalogue_coverage(lists({}), n_items=10) == 0.0
    with pytest.raises(ValueError):
        m.catalogue_coverage(predictions, n_items=0)


def test_novelty_is_mean_self_information() -> None:
    # counts 4, 2, 1, 1 of 8 interactions: p = 1/2, 1/4, 1/8, 1/8 -> -log2 p = 1, 2, 3, 3
    popularity = pd.Series({1: 4, 2: 2, 3: 1, 4: 1})
    # rows: 1, 2, 1, 3 -> (1 + 2 + 1 + 3) / 4 = 1.75
    assert m.novelty(lists({1: [1, 2], 2: [1, 3]}), popularity) == pytest.approx(1.75)
    # an item never interacted with counts once: -log2(1/8) = 3
    assert m.novelty(lists({1: [9]}), popularity) == pytest.approx(3.0)
    assert m.novelty(lists({}), popularity) == 0.0


def test_diversity_from_categories_is_the_share_of_pairs_in_different_categories() -> None:
    categories = pd.Series({1: "sport", 2: "sport", 3: "food", 4: "finance"})
    # user 1: (1,2) same, (1,3) and (2,3) differ -> 1 - 1/3 = 2/3; user 2: all differ -> 1
    predictions = lists({1: [1, 2, 3], 2: [1, 3, 4]})
    assert m.intra_list_diversity(predictions, item_categories=categories) == pytest.approx(5 / 6)
    same = lists({1: [1, 2]})
    assert m.intra_list_diversity(same, item_categories=categories) == 0.0


def test_diversity_from_vectors_is_one_minus_mean_cosine() -> None:
    vectors = pd.DataFrame([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], index=[1, 2, 3])
    # cos(1, 2) = 1/sqrt(2) -> 0.2929; cos(1, 3) = 0 -> 1; mean 0.6464
    predictions = lists({1: [1, 2], 2: [1, 3]})
    expected = ((1 - 1 / math.sqrt(2)) + 1.0) / 2
    assert m.intra_list_diversity(predictions, item_vectors=vectors) == pytest.approx(expected)
    as_series = pd.Series([np.array(v) for v in vectors.to_numpy()], index=vectors.index)
    assert m.intra_list_diversity(predictions, item_vectors=as_series) == pytest.approx(expected)


def test_diversity_with_tag_lists_is_multi_hot_cosine() -> None:
    tags = pd.Series({1: ["x", "y"], 2: ["y", "z"]})
    # |{y}| / (sqrt 2 * sqrt 2) = 0.5 -> diversity 0.5
    assert m.intra_list_diversity(lists({1: [1, 2]}), item_categories=tags) == pytest.approx(0.5)


def test_diversity_skips_single_item_lists_and_needs_features() -> None:
    categories = pd.Series({1: "a", 2: "b"})
    assert m.intra_list_diversity(lists({1: [1], 2: [1, 2]}), item_categories=categories) == 1.0
    assert m.intra_list_diversity(lists({1: [1]}), item_categories=categories) == 0.0
    with pytest.raises(ValueError, match="item_vectors or item_categories"):
        m.intra_list_diversity(lists({1: [1, 2]}))


def test_the_registry_names_every_metric() -> None:
    assert set(m.METRICS) == {
        "precision_at_k",
        "recall_at_k",
        "ndcg_at_k",
        "map_at_k",
        "map",
        "mrr_at_k",
        "hit_rate_at_k",
        "catalogue_coverage",
        "novelty",
        "intra_list_diversity",
    }


# --- agreement with a per-user loop ---------------------------------------------------------


def loop_metrics(truth: pd.DataFrame, predictions: pd.DataFrame, k: int) -> dict[str, float]:
    """The textbook definitions, one user at a time."""
    ordered = predictions.sort_values([m.USER_COL, m.SCORE_COL, m.ITEM_COL], ascending=[1, 0, 1])
    totals = dict.fromkeys(RANKING, 0.0)
    users = sorted(truth[m.USER_COL].unique())
    for user in users:
        relevant = set(truth.loc[truth[m.USER_COL] == user, m.ITEM_COL])
        ranked = list(dict.fromkeys(ordered.loc[ordered[m.USER_COL] == user, m.ITEM_COL]))[:k]
        hit_ranks = [r for r, item in enumerate(ranked, start=1) if item in relevant]
        ideal = sum(1 / math.log2(1 + r) for r in range(1, min(len(relevant), k) + 1))
        precision_sum = sum(j / r for j, r in enumerate(hit_ranks, start=1))
        totals["precision_at_k"] += len(hit_ranks) / k
        totals["recall_at_k"] += len(hit_ranks) / len(relevant)
        totals["ndcg_at_k"] += sum(1 / math.log2(1 + r) for r in hit_ranks) / ideal
        totals["map_at_k"] += precision_sum / min(len(relevant), k)
        totals["map"] += precision_sum / len(relevant)
        totals["mrr_at_k"] += 1 / hit_ranks[0] if hit_ranks else 0.0
        totals["hit_rate_at_k"] += 1.0 if hit_ranks else 0.0
    return {name: total / len(users) for name, total in totals.items()}


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_metrics_match_a_per_user_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = frame(list(zip(rng.integers(0, 20, 150), rng.integers(0, 40, 150), strict=True)))
    truth = truth.drop_duplicates()
    predictions = pd.DataFrame(
        {
            m.USER_COL: rng.integers(0, 25, 400),
            m.ITEM_COL: rng.integers(0, 40, 400),
            m.SCORE_COL: rng.integers(0, 5, 400).astype(float),  # many ties and duplicates
        }
    )
    k = int(rng.integers(1, 11))
    expected = loop_metrics(truth, predictions, k)
    for name in RANKING:
        assert m.METRICS[name](truth, predictions, k) == pytest.approx(expected[name]), name
