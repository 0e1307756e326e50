"""Evaluation protocols and the harness: the split's guarantees, a hand-checked popularity run,
the platform time split, and the MovieLens benchmark figures (skipped without the data)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import pytest

from inbo import schemas
from inbo.settings import Settings
from models.base import TrainingData, no_candidates
from models.evaluation import (
    Split,
    evaluate,
    movielens_split,
    stratified_split,
    time_split,
    top_k_lists,
)
from models.popularity import PopularityModel
from pipelines.offline.datasets import MOVIELENS_DIR, MovieLens, load_mind, load_movielens

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)

needs_movielens = pytest.mark.skipif(
    not (MOVIELENS_DIR / "u.data").is_file(),
    reason=f"MovieLens-100k is not at {MOVIELENS_DIR} (it is read in place, never copied here)",
)


def ratings_frame(per_user: dict[int, int]) -> pd.DataFrame:
    rows = [(u, 100 * u + j) for u, n in per_user.items() for j in range(n)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"])
    return frame.assign(rating=4.0, ts=pd.Timestamp(AS_OF))


# --- stratified split -----------------------------------------------------------------------


def test_stratified_split_keeps_every_user_on_both_sides_with_75_percent_in_train() -> None:
    ratings = ratings_frame({1: 4, 2: 8, 3: 20, 4: 37})
    train, test = stratified_split(ratings, ratio=0.75, by="user", seed=42)
    assert set(train["user_id"]) == set(test["user_id"]) == {1, 2, 3, 4}
    # position / size <= 0.75 puts floor(0.75 n) rows of each user in train
    assert train.groupby("user_id").size().to_dict() == {1: 3, 2: 6, 3: 15, 4: 27}
    assert len(train) + len(test) == len(ratings)
    assert set(train.index).isdisjoint(test.index)


def test_stratified_split_is_deterministic_for_a_seed() -> None:
    ratings = ratings_frame({1: 12, 2: 12})
    first, _ = stratified_split(ratings, seed=42)
    again, _ = stratified_split(ratings, seed=42)
    other, _ = stratified_split(ratings, seed=7)
    assert first.index.equals(again.index)
    assert not first.index.equals(other.index)


def test_stratified_split_draws_like_numpy_seeded_rand() -> None:
    # RandomState(42).rand(4) = 0.3745, 0.9507, 0.7320, 0.5987: ordered rows 0, 3, 2, 1, and
    # positions 1..4 / 4 = 0.25, 0.5, 0.75, 1.0 -> rows 0, 3, 2 train, row 1 test
    ratings = ratings_frame({1: 4})
    train, test = stratified_split(ratings, ratio=0.75, seed=42)
    assert sorted(train.index) == [0, 2, 3]
    assert test.index.tolist() == [1]


def test_stratified_split_by_item_stratifies_items() -> None:
    ratings = pd.DataFrame({"user_id": range(8), "item_id": [1] * 4 + [2] * 4, "rating": 1.0})
    train, _ = stratified_split(ratings, by="item")
    assert train.groupby("item_id").size().to_dict() == {1: 3, 2: 3}


# --- harness on a hand-checkable split ------------------------------------------------------


def items_frame() -> pd.DataFrame:
    rows = [(10, "sport"), (11, "sport"), (12, "sport"), (20, "finance"), (21, "finance")]
    frame = pd.DataFrame(rows, columns=["item_id", "category"]).assign(
        publisher_id=1,
        publisher="p",
        title="t",
        description="d",
        tags=[[] for _ in rows],
        published_at=AS_OF - timedelta(days=1),
        language="en",
    )
    return schemas.conform(frame, schemas.ITEMS)


def tiny_split() -> Split:
    """Training reads: user 1 -> 10; 2 -> 10, 11; 3 -> 20; 4 -> 10, 21 (weight 1 each).

    Popularity: 10 = 3, 11 = 1, 12 = 0 in sport; 20 = 1, 21 = 1 in finance.
    User 1 reads only sport: candidates 10, 11, 12 -> 10 is seen -> list 11, 12.
    User 3 reads only finance: candidates 20, 21 (tie, lower id first) -> 20 seen -> list 21.
    Truth: user 1 -> 12, user 3 -> 21.
    """
    pairs = [(1, 10), (2, 10), (2, 11), (3, 20), (4, 10), (4, 21)]
    interactions = pd.DataFrame(pairs, columns=["user_id", "item_id"]).assign(
        weight=1.0, events=1, last_ts=AS_OF, read_fraction=1.0, is_read=True, dismissed=False
    )
    train = TrainingData(
        interactions=schemas.conform(interactions, schemas.INTERACTIONS),
        items=items_frame(),
        continue_reading=schemas.empty(schemas.CONTINUE_READING),
        as_of=AS_OF,
    )
    truth = pd.DataFrame({"user_id": [1, 3], "item_id": [12, 21]})
    return Split("tiny", train, truth, seen=interactions[["user_id", "item_id"]])


def test_popularity_on_a_tiny_split_scores_as_computed_by_hand() -> None:
    table = evaluate({"popularity": PopularityModel}, tiny_split(), k=2)
    row = table.loc["popularity"]
    # user 1: hit at position 2 of 2; user 3: hit at position 1 of 1
    assert row["precision_at_k"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert row["recall_at_k"] == pytest.approx(1.0)
    assert row["ndcg_at_k"] == pytest.approx((1 / np.log2(3) + 1.0) / 2)  # 0.8155
    assert row["mrr_at_k"] == pytest.approx((1 / 2 + 1) / 2)
    assert row["hit_rate_at_k"] == pytest.approx(1.0)
    assert row["catalogue_coverage"] == pytest.approx(3 / 5)  # {11, 12, 21} of 5 items
    assert row["intra_list_diversity"] == pytest.approx(0.0)  # user 1's list is all sport
    assert row["users"] == 2
    assert row["user_coverage"] == 1.0
    assert row["fit_seconds"] >= 0.0
    assert row["recommend_seconds"] >= 0.0


class Silent:
    """A model with nothing to say: its users must count as misses, not disappear."""

    name = "silent"

    def fit(self, data: TrainingData) -> Self:
        return self

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        return no_candidates()

    def save(self, directory: Path) -> None:
        pass

    @classmethod
    def load(cls, directory: Path) -> Self:
        return cls()


def test_one_row_per_model_and_unserved_users_score_zero() -> None:
    table = evaluate(
        {"popularity": PopularityModel, "silent": Silent},
        tiny_split(),
        k=2,
        metrics=["ndcg_at_k", "precision_at_k"],
    )
    assert table.index.tolist() == ["popularity", "silent"]
    assert list(table.columns) == [
        "ndcg_at_k",
        "precision_at_k",
        "users",
        "user_coverage",
        "fit_seconds",
        "recommend_seconds",
    ]
    assert table.loc["silent", "ndcg_at_k"] == 0.0
    assert table.loc["silent", "user_coverage"] == 0.0


def test_unknown_metrics_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate({"popularity": PopularityModel}, tiny_split(), metrics=["ndgc_at_k"])


def test_top_k_lists_drop_seen_items_and_fill_from_below() -> None:
    candidates = pd.DataFrame(
        {"user_id": [1, 1, 1, 2], "item_id": [10, 11, 12, 10], "score": [0.9, 0.5, 0.1, 1.0]}
    )
    seen = pd.DataFrame({"user_id": [1], "item_id": [10]})
    lists = top_k_lists(candidates, np.array([1]), seen, k=2)
    assert lists[["item_id", "rank"]].values.tolist() == [[11, 1], [12, 2]]


# --- platform time split --------------------------------------------------------------------


def events_frame(rows: list[tuple[int, int, str, timedelta]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "ts": [AS_OF + r[3] for r in rows],
        }
    )
    for column in schemas.USER_EVENTS.names:
        if column not in frame.columns:
            frame[column] = None
    return schemas.conform(frame, schemas.USER_EVENTS)


def test_time_split_learns_from_the_past_and_scores_new_items_in_the_window(
    settings: Settings,
) -> None:
    hour, day = timedelta(hours=1), timedelta(days=1)
    events = events_frame(
        [
            (1, 10, "click", -2 * day),  # history: 10 is seen by user 1
            (1, 12, "impression", -day),  # only shown: not seen
            (1, 11, "read", hour),  # truth
            (1, 10, "click", 2 * hour),  # seen before: not truth
            (1, 12, "click", 3 * hour),  # truth
            (2, 20, "click", hour),  # user 2 has no history: not evaluated
            (3, 20, "click", -day),  # history for user 3
            (3, 30, "click", hour),  # 30 is published after the cutoff: not servable
            (3, 21, "click", 2 * day),  # after the window
            (3, 21, "read", -40 * day),  # before the 30-day history window: forgotten
        ]
    )
    items = pd.concat([items_frame(), items_frame().head(1).assign(item_id=30)])
    items.loc[items["item_id"] == 30, "published_at"] = pd.Timestamp(AS_OF + hour)
    split = time_split(events, items, AS_OF, timedelta(days=1), settings=settings)
    assert split.truth.values.tolist() == [[1, 11], [1, 12]]
    assert split.users.tolist() == [1]
    assert sorted(map(tuple, split.seen.values.tolist())) == [(1, 10), (3, 20)]
    interactions = split.train.interactions
    assert sorted(zip(interactions["user_id"], interactions["item_id"], strict=True)) == [
        (1, 10),
        (1, 12),
        (3, 20),
    ]
    assert (interactions["last_ts"] < pd.Timestamp(AS_OF)).all()
    assert 30 not in set(split.train.items["item_id"])


def write_mind(folder: Path) -> Path:
    """The MIND sample of test_datasets: 4 articles, 3 impressions, U10 has a click history."""
    news = [
        "N1\tsports\tfootball_nfl\tTitle one\tAbstract one\thttp://a\t[]\t[]",
        "N2\tnews\tnewsus\tTitle two\t\thttp://b\t[]\t[]",
        "N3\tfinance\tmarkets\tTitle three\tAbstract three\thttp://c\t[]\t[]",
        "N4\tsports\tgolf\tTitle four\tAbstract four\thttp://d\t[]\t[]",
    ]
    behaviors = [
        "1\tU10\t11/15/2019 8:55:22 AM\tN1 N2\tN3-1 N4-0",
        "2\tU11\t11/15/2019 9:00:00 AM\t\tN1-0 N3-0 N4-1",
        "3\tU10\t11/16/2019 1:00:00 PM\tN1 N2\tN4-1",
    ]
    folder.mkdir(parents=True)
    (folder / "news.tsv").write_text("\n".join(news) + "\n")
    (folder / "behaviors.tsv").write_text("\n".join(behaviors) + "\n")
    return folder


def test_mind_flows_through_the_time_split_and_the_harness(
    tmp_path: Path, settings: Settings
) -> None:
    mind = load_mind(write_mind(tmp_path / "mind"))
    cutoff = datetime(2019, 11, 16, tzinfo=UTC)
    split = time_split(mind.events, mind.items, cutoff, timedelta(days=1), settings=settings)
    # U10 clicks N4 on the 16th; it was only shown to them before, so it is new to them
    assert split.truth.values.tolist() == [[10, 4]]
    # U10 read sports, news and finance; N1, N2, N3 are seen, N4 is the sports item left
    table = evaluate({"popularity": PopularityModel}, split, k=10)
    assert table.loc["popularity", "hit_rate_at_k"] == 1.0
    assert table.loc["popularity", "ndcg_at_k"] == pytest.approx(1.0)


# --- Microsoft Recommenders' MovieLens-100k benchmark ---------------------------------------


@pytest.fixture(scope="module")
def movielens() -> MovieLens:
    return load_movielens()


@needs_movielens
def test_movielens_splits_have_the_reference_sizes(movielens: MovieLens) -> None:
    by_item = movielens_split(movielens.ratings, movielens.items, by="item")
    by_user = movielens_split(movielens.ratings, movielens.items, by="user")
    # sizes of Microsoft's python_stratified_split(ratio=0.75, seed=42) on u.data
    assert (len(by_item.seen), len(by_item.truth)) == (74_331, 25_669)
    assert (len(by_user.seen), len(by_user.truth)) == (74_646, 25_354)
    assert set(by_user.seen["user_id"]) == set(by_user.truth["user_id"])
    assert len(by_user.users) == len(by_item.users) == 943
    assert len(by_item.catalogue) == 1682
    assert by_item.train.as_of > movielens.ratings["ts"].max()


@needs_movielens
def test_popularity_on_movielens_matches_an_independent_computation(movielens: MovieLens) -> None:
    """The harness's table against the same lists scored here with plain numpy: the metric
    definitions of Microsoft Recommenders (binary relevance, ideal DCG over min(k, |truth|),
    recall over |truth|, precision over k) applied user by user."""
    split = movielens_split(movielens.ratings, movielens.items)
    table = evaluate({"popularity": PopularityModel}, split, k=10)
    model = PopularityModel().fit(split.train)
    users = split.users
    lists = top_k_lists(model.recommend(users, 10 + 1682), users, split.seen, 10)
    truth = split.truth.groupby("user_id")["item_id"].agg(set)
    ndcg, precision, recall = [], [], []
    for user, items in lists.groupby("user_id"):
        hits = np.array([item in truth[user] for item in items.sort_values("rank")["item_id"]])
        gains = hits / np.log2(np.arange(2, len(hits) + 2))
        ideal = (1 / np.log2(np.arange(2, min(10, len(truth[user])) + 2))).sum()
        ndcg.append(gains.sum() / ideal)
        precision.append(hits.sum() / 10)
        recall.append(hits.sum() / len(truth[user]))
    row = table.loc["popularity"]
    assert row["user_coverage"] == 1.0
    assert row["ndcg_at_k"] == pytest.approx(np.mean(ndcg), abs=1e-9)
    assert row["precision_at_k"] == pytest.approx(np.mean(precision), abs=1e-9)
    assert row["recall_at_k"] == pytest.approx(np.mean(recall), abs=1e-9)
    # per-genre popularity is far below a personalised model, far above nothing (docs/benchmarks.md)
    assert 0.2 < row["ndcg_at_k"] < 0.3
