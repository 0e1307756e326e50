"""ALS: a tiny world of two reading communities with a known answer, plus the matrix helpers.

Users 1-8 read only community-A issues (101-106), users 11-18 only community-B issues (201-206).
User 9 is a new A reader with two reads, one dismissal, one read whose weight decayed to zero and
one mere impression: their recommendations are the A issues they have not met (105 and 106). Issue 150 is in the
catalogue but nobody read it; issue 999 is published after `as_of` yet has (leaked) reads.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from inbo import schemas
from inbo.reasons import catalogue_of, render_frame
from inbo.settings import REPO_ROOT
from models.als import ALSModel
from models.base import CANDIDATE_COLUMNS, TrainingData
from models.matrix import IdMap, confidence, pair_matrix

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)
A_ITEMS = [101, 102, 103, 104, 105, 106]
B_ITEMS = [201, 202, 203, 204, 205, 206]
COLD, FUTURE = 150, 999
NEW_A_READER = 9


def catalogue() -> pd.DataFrame:
    ids = [*A_ITEMS, *B_ITEMS, COLD, FUTURE]
    frame = pd.DataFrame(
        {
            "item_id": ids,
            "publisher_id": 1,
            "publisher": "p",
            "title": [f"Issue {item}" for item in ids],
            "description": "d",
            "category": "c",
            "tags": [[] for _ in ids],
            "published_at": [AS_OF - timedelta(days=-1 if i == FUTURE else 2) for i in ids],
            "language": "en",
        }
    )
    return schemas.conform(frame, schemas.ITEMS)


def community(users: range, items: list[int]) -> list[tuple[int, int, float, bool, bool]]:
    """Each user reads four of the six issues, rotating, with weights 1-4."""
    return [
        (user, items[(user + k) % len(items)], 1.0 + k, True, False)
        for user in users
        for k in range(4)
    ]


def world_rows() -> list[tuple[int, int, float, bool, bool]]:
    return [
        *community(range(1, 9), A_ITEMS),
        *community(range(11, 19), B_ITEMS),
        *[(user, FUTURE, 3.0, True, False) for user in (1, 2, 11)],
        (NEW_A_READER, 101, 3.0, True, False),
        (NEW_A_READER, 102, 2.0, True, False),
        (NEW_A_READER, 103, -2.0, False, True),  # dismissed
        (NEW_A_READER, 104, 0.0, True, False),  # read long ago, weight decayed to nothing
        (NEW_A_READER, 105, 0.0, False, False),  # only an impression: not a reason to hide it
    ]


def training(rows: list[tuple[int, int, float, bool, bool]]) -> TrainingData:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "weight", "is_read", "dismissed"])
    frame = frame.assign(events=1, last_ts=AS_OF - timedelta(hours=1), read_fraction=1.0)
    return TrainingData(
        interactions=schemas.conform(frame, schemas.INTERACTIONS),
        items=catalogue(),
        continue_reading=schemas.empty(schemas.CONTINUE_READING),
        as_of=AS_OF,
    )


def fresh(weighting: str = "none") -> ALSModel:
    """Two factors: the world has exactly two tastes, so its known answer is a rank-2 structure."""
    return ALSModel(
        factors=2,
        regularization=1.0,
        alpha=2.0,
        iterations=15,
        weighting=weighting,
        random_state=3,
        num_threads=1,
    )


@pytest.fixture(scope="module")
def world() -> TrainingData:
    return training(world_rows())


@pytest.fixture(scope="module")
def model(world: TrainingData) -> ALSModel:
    return fresh().fit(world)


ALL_USERS = np.array([*range(1, 10), *range(11, 19)])


def reasons_of(recs: pd.DataFrame) -> pd.Series:
    """The sentence of each candidate, rendered from its reason code and ref."""
    return render_frame(recs, catalogue_of(catalogue()))


def test_a_new_community_a_reader_gets_the_unseen_a_issues(model: ALSModel) -> None:
    recs = model.recommend(np.array([NEW_A_READER]), n=3)
    assert set(recs["item_id"].head(2)) == {105, 106}
    assert recs["item_id"].iloc[2] in B_ITEMS
    assert list(recs.columns) == list(CANDIDATE_COLUMNS)
    assert (recs["source"] == "als").all()


def test_readers_rank_their_own_community_first(model: ALSModel) -> None:
    recs = model.recommend(ALL_USERS, n=20)
    first = recs.groupby("user_id").head(1).set_index("user_id")["item_id"]
    assert all(first[user] in A_ITEMS for user in range(1, 10))
    assert all(first[user] in B_ITEMS for user in range(11, 19))


def test_never_recommends_seen_cold_or_future_items(model: ALSModel, world: TrainingData) -> None:
    recs = model.recommend(ALL_USERS, n=20)
    met = world.interactions
    met = met[(met["weight"] != 0) | met["is_read"] | met["dismissed"]]
    assert recs.merge(met[["user_id", "item_id"]], on=["user_id", "item_id"]).empty
    assert not recs["item_id"].isin([COLD, FUTURE]).any()
    mine = recs.loc[recs["user_id"] == NEW_A_READER, "item_id"]
    assert set(mine).isdisjoint({101, 102, 103, 104})


def test_unknown_users_get_no_rows(model: ALSModel) -> None:
    assert model.recommend(np.array([12345]), n=5).empty
    recs = model.recommend(np.array([12345, 1, 1]), n=5)
    assert set(recs["user_id"]) == {1}
    assert recs["user_id"].dtype == np.int64 and recs["score"].dtype == np.float64


def test_same_random_state_same_model(world: TrainingData, model: ALSModel) -> None:
    again = fresh().fit(world)
    np.testing.assert_array_equal(again.als.user_factors, model.als.user_factors)
    pd.testing.assert_frame_equal(again.recommend(ALL_USERS, 5), model.recommend(ALL_USERS, 5))


def test_every_row_is_explained_by_a_positive_read_of_the_user(
    model: ALSModel, world: TrainingData
) -> None:
    recs = model.recommend(ALL_USERS, n=20)
    assert (recs["reason_code"] == "because_you_read").all()
    title = reasons_of(recs).str.extract(r"^Because you read “(Issue (\d+))”$")[1].astype("int64")
    assert title.notna().all()
    positive = world.interactions[world.interactions["weight"] > 0]
    read = set(zip(positive["user_id"], positive["item_id"], strict=True))
    assert all(pair in read for pair in zip(recs["user_id"], title, strict=True))


def test_reasons_match_implicit_explain(model: ALSModel) -> None:
    recs = model.recommend(ALL_USERS, n=5)
    because = reasons_of(recs).str.extract(r"Issue (\d+)")[0].astype("int64").to_numpy()
    users = model.users.index(recs["user_id"].to_numpy())
    items = model.items.index(recs["item_id"].to_numpy())
    expected = [
        model.items.ids[model.als.explain(0, model.confidence[[user]], item, N=1)[1][0][0]]
        for user, item in zip(users, items, strict=True)
    ]
    np.testing.assert_array_equal(because, expected)


def test_similar_items_stay_in_their_community(model: ALSModel) -> None:
    similar = model.similar_items(101, k=3)
    assert len(similar) == 3 and set(similar["item_id"]) <= set(A_ITEMS) - {101}
    assert model.similar_items(FUTURE, k=3).empty
    assert model.similar_items(COLD, k=3).empty


def test_recalculate_user_moves_recs_towards_new_reads(world: TrainingData) -> None:
    model = fresh().fit(world)
    new = pd.DataFrame({"item_id": [201, 202, 203, 204], "weight": 4.0, "is_read": True})
    model.recalculate_user(NEW_A_READER, new)
    recs = model.recommend(np.array([NEW_A_READER]), n=2)
    assert set(recs["item_id"]) == {205, 206}


def test_recalculate_users_folds_in_a_new_user(world: TrainingData) -> None:
    model = fresh().fit(world)
    new = pd.DataFrame({"user_id": 77, "item_id": [201, 202, 203], "weight": 3.0})
    model.recalculate_users(new)
    recs = model.recommend(np.array([77]), n=3)
    assert set(recs["item_id"]) == {204, 205, 206}
    assert reasons_of(recs).str.contains("Issue 20[123]").all()


def test_refit_users_replaces_rows_so_repeating_it_changes_nothing(world: TrainingData) -> None:
    """The hourly fold-in: a user's whole rebuilt row replaces the stored one, it never adds up."""
    rows = pd.DataFrame(
        {"user_id": NEW_A_READER, "item_id": [201, 202, 203, 204], "weight": 4.0, "is_read": True}
    )
    once = fresh().fit(world).refit_users(rows)
    twice = fresh().fit(world).refit_users(rows).refit_users(rows)
    added = fresh().fit(world).recalculate_users(rows).recalculate_users(rows)
    position = once.users.index(np.array([NEW_A_READER]))[0]

    np.testing.assert_allclose(
        twice.als.user_factors[position], once.als.user_factors[position], rtol=1e-5
    )
    assert set(once.weights[position].indices) == set(
        once.items.index(np.array([201, 202, 203, 204]))
    )
    assert not np.allclose(added.weights[position].toarray(), once.weights[position].toarray())
    recs = once.recommend(np.array([NEW_A_READER]), n=2)
    assert set(recs["item_id"]) == {205, 206}  # its old A-community reads are gone from the row


@pytest.mark.parametrize("weighting", ["bm25", "tfidf"])
def test_weighted_confidence_finds_the_same_communities(
    world: TrainingData, weighting: str
) -> None:
    model = fresh(weighting).fit(world)
    recs = model.recommend(np.array([NEW_A_READER, 11]), n=2).groupby("user_id")["item_id"]
    assert set(recs.get_group(NEW_A_READER)) == {105, 106}
    assert set(recs.get_group(11)) <= set(B_ITEMS)


def test_default_hyperparameters_find_the_communities(world: TrainingData) -> None:
    recs = ALSModel().fit(world).recommend(np.array([NEW_A_READER]), n=2)
    assert set(recs["item_id"]) == {105, 106}


@pytest.mark.parametrize(
    "rows",
    [
        [(1, 101, 2.0, True, False), (1, 102, 1.0, True, False)],  # one user
        [(1, 101, -2.0, False, True), (2, 102, -1.0, False, True)],  # only dismissals
        [(1, FUTURE, 2.0, True, False), (2, FUTURE, 1.0, True, False)],  # only future items
    ],
)
def test_too_few_interactions_cannot_fit(rows: list[tuple[int, int, float, bool, bool]]) -> None:
    with pytest.raises(ValueError, match="ALS cannot fit"):
        fresh().fit(training(rows))


def test_save_then_load_in_a_fresh_process_recommends_the_same(
    model: ALSModel, tmp_path: Path
) -> None:
    model.save(tmp_path / "als")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import numpy as np
        from models.als import ALSModel
        model = ALSModel.load(Path({str(tmp_path / "als")!r}))
        recs = model.recommend(np.array({ALL_USERS.tolist()!r}), n=10)
        recs.to_parquet({str(tmp_path / "recs.parquet")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=60)
    loaded = pd.read_parquet(tmp_path / "recs.parquet")
    pd.testing.assert_frame_equal(loaded, model.recommend(ALL_USERS, n=10))


def test_confidence_keeps_positive_weights_as_one_plus_alpha_w() -> None:
    weights = sp.csr_matrix(np.array([[2.0, -1.0, 0.0], [0.5, 0.0, 3.0]], dtype=np.float32))
    result = confidence(weights, alpha=10.0).toarray()
    np.testing.assert_allclose(result, [[21.0, 0.0, 0.0], [6.0, 0.0, 31.0]])
    with pytest.raises(ValueError, match="unknown weighting"):
        confidence(weights, alpha=1.0, weighting="log")


def test_id_map_round_trips_and_appends(tmp_path: Path) -> None:
    ids = IdMap(np.array([40, 10, 30]))
    np.testing.assert_array_equal(ids.index(np.array([10, 99, 40])), [1, -1, 0])
    grown = ids.extend(np.array([30, 77, 77]))
    np.testing.assert_array_equal(grown.ids, [40, 10, 30, 77])
    grown.save(tmp_path / "ids.npy")
    np.testing.assert_array_equal(IdMap.load(tmp_path / "ids.npy").ids, grown.ids)
    matrix = pair_matrix(
        ids, IdMap(np.array([5, 6])), np.array([10, 10, 99]), np.array([6, 6, 5]), np.ones(3)
    )
    np.testing.assert_array_equal(matrix.toarray(), [[0, 0], [0, 2], [0, 0]])
