"""The contract every model behind `models.base.Recommender` keeps, run over each one in the factory.

One shared world with a known answer (as implicit's `recommender_base_test` does): two reading
communities, sport (items 10-15) and finance (20-25), four readers each, and one issue published
after `as_of` that nobody may be offered. Every model must refuse to answer before `fit`, answer in
the candidate columns with reasons from the one reason table, offer a sport reader sport and a
finance reader finance, and give the same answer after a save/load round trip.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inbo import schemas
from inbo.errors import NotFitted
from inbo.reasons import BY_CODE, SOURCE_OF
from models.base import CANDIDATE_COLUMNS, TrainingData
from models.factory import MODELS, create

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)
SPORT, FINANCE = list(range(10, 16)), list(range(20, 26))
FUTURE_ITEM = 99
SPORT_READERS, FINANCE_READERS = [1, 2, 3, 4], [5, 6, 7, 8]
STARTED = (1, 15, 0.3)
"""User 1 is 30% through sport issue 15: continue reading's known answer."""
FILTERS_SEEN = {"als", "content"}
"""Models that never offer what the user already has; the others leave that to `propose`."""
PARAMS = {"als": {"factors": 4, "iterations": 30, "regularization": 0.05}}
"""A tiny matrix needs few factors; the production defaults are sized for thousands of users."""


def catalogue() -> pd.DataFrame:
    ids = [*SPORT, *FINANCE, FUTURE_ITEM]
    published = [AS_OF - timedelta(days=10)] * (len(ids) - 1) + [AS_OF + timedelta(hours=1)]
    frame = pd.DataFrame(
        {
            "item_id": ids,
            "publisher_id": [1 if i in SPORT else 2 for i in ids],
            "publisher": ["Pitch" if i in SPORT else "Ledger" for i in ids],
            "title": [f"Issue {i}" for i in ids],
            "description": "",
            "category": ["sport" if i in SPORT else "finance" for i in ids],
            "tags": [[] for _ in ids],
            "published_at": published,
            "language": "en",
        }
    )
    return schemas.conform(frame, schemas.ITEMS)


def interactions() -> pd.DataFrame:
    """Each reader read all but one issue of their community (the one left is their answer)."""
    rows = []
    for readers, items in ((SPORT_READERS, SPORT), (FINANCE_READERS, FINANCE)):
        for n, user in enumerate(readers):
            rows += [(user, item) for k, item in enumerate(items) if k != n]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(
        weight=2.0,
        events=1,
        last_ts=AS_OF - timedelta(days=1),
        read_fraction=1.0,
        is_read=True,
        dismissed=False,
    )
    return schemas.conform(frame, schemas.INTERACTIONS)


def embeddings(items: pd.DataFrame) -> pd.DataFrame:
    """Unit vectors: each community around its own axis, a little noise so no two coincide."""
    rng = np.random.default_rng(5)
    axis = np.eye(8, dtype=np.float32)
    vectors = [
        axis[0 if category == "sport" else 1] + 0.05 * rng.standard_normal(8).astype(np.float32)
        for category in items["category"]
    ]
    return pd.DataFrame(
        {
            "item_id": items["item_id"],
            "content_hash": [f"h{i}" for i in items["item_id"]],
            "model": "test-vectors",
            "embedding": [list(v / np.linalg.norm(v)) for v in vectors],
        }
    )


@pytest.fixture(scope="module")
def world() -> TrainingData:
    items = catalogue()
    user, item, fraction = STARTED
    started = pd.DataFrame(
        {
            "user_id": [user],
            "item_id": [item],
            "read_fraction": [fraction],
            "updated_at": [AS_OF - timedelta(hours=3)],
        }
    )
    return TrainingData(
        interactions=interactions(),
        items=items,
        continue_reading=schemas.conform(started, schemas.CONTINUE_READING),
        as_of=AS_OF,
        embeddings=embeddings(items),
    )


@pytest.fixture(params=sorted(MODELS))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def fitted(name: str, world: TrainingData):  # type: ignore[no-untyped-def]
    return create(name, **PARAMS.get(name, {})).fit(world)


def test_an_unfitted_model_refuses_to_answer(name: str, tmp_path: Path) -> None:
    model = create(name, **PARAMS.get(name, {}))
    with pytest.raises(NotFitted, match="not fitted"):
        model.recommend(np.array(SPORT_READERS), 3)
    with pytest.raises(NotFitted):
        model.save(tmp_path / name)


def test_answers_in_the_candidate_columns_with_known_reasons(
    name: str, world: TrainingData
) -> None:
    recs = fitted(name, world).recommend(np.array([*SPORT_READERS, *FINANCE_READERS, 999]), 3)
    assert tuple(recs.columns) == CANDIDATE_COLUMNS
    assert not recs.empty
    assert recs.groupby("user_id").size().max() <= 3
    assert 999 not in set(recs["user_id"])  # an unknown user gets nothing, not an error
    assert FUTURE_ITEM not in set(recs["item_id"])  # published after as_of
    assert not recs.duplicated(["user_id", "item_id"]).any()
    assert set(recs["reason_code"]) <= set(BY_CODE)
    assert (recs["source"] == recs["reason_code"].map(SOURCE_OF)).all()
    needs_ref = recs["reason_code"].map(lambda code: BY_CODE[code].needs_ref)
    assert recs.loc[needs_ref, "reason_ref"].notna().all()


def test_a_reader_is_offered_their_own_community(name: str, world: TrainingData) -> None:
    recs = fitted(name, world).recommend(np.array([1, 5]), 3)
    first = recs.sort_values(["user_id", "score"], ascending=[True, False]).groupby("user_id")
    top = first["item_id"].first()
    if name == "continue_reading":
        assert top.to_dict() == {STARTED[0]: STARTED[1]}  # only user 1 started something
        return
    assert top[1] in SPORT and top[5] in FINANCE
    if name in FILTERS_SEEN:
        # the one issue of their community each reader has not read comes first
        assert top.to_dict() == {1: SPORT[0], 5: FINANCE[0]}


def test_save_and_load_give_the_same_answer(name: str, world: TrainingData, tmp_path: Path) -> None:
    model = fitted(name, world)
    model.save(tmp_path / name)
    loaded = MODELS[name].load(tmp_path / name)
    users = np.array([*SPORT_READERS, *FINANCE_READERS])
    pd.testing.assert_frame_equal(model.recommend(users, 3), loaded.recommend(users, 3))
