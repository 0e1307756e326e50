"""Content model on the embeddings tests' catalogue, encoded with the real model.

Behaviour first (a cooking reader gets cooking, reasons name the closest read issue, nothing seen or
unpublished comes back), then the index: HNSW agrees with exact search, save/load changes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_embeddings import AS_OF, CATALOGUE, catalogue_items

from features.embeddings import encode_items
from inbo import schemas
from inbo.errors import DataNotFound, SourceError
from inbo.reasons import catalogue_of, render_frame
from models.base import CANDIDATE_COLUMNS, TrainingData
from models.content import ARTIFACT_VERSION, ContentModel

TOPIC = {item_id: topic for item_id, topic, _, _ in CATALOGUE}
TITLE = {item_id: title for item_id, _, title, _ in CATALOGUE}
UNPUBLISHED = 5
"""A cooking issue scheduled after `AS_OF`: the closest match for cooking readers, never offered."""

COOK, MIXED, FOOTBALL, DISMISSER = 1, 2, 3, 4


def items() -> pd.DataFrame:
    future = catalogue_items(
        [(UNPUBLISHED, "cooking", "Pasta sauces for busy weeknights", "Tomato and garlic recipes.")]
    )
    future["published_at"] = AS_OF + timedelta(days=1)
    return pd.concat([catalogue_items(), future], ignore_index=True)


def interactions() -> pd.DataFrame:
    """(user, item, weight, days ago): a cooking reader, a cooking+football reader, and so on."""
    rows = [
        (COOK, 1, 3.0, 1),
        (COOK, 2, 2.0, 2),
        (MIXED, 1, 2.0, 1),
        (MIXED, 13, 2.0, 1),
        (FOOTBALL, 11, 2.0, 1),
        (FOOTBALL, 12, 0.0, 1),  # shown but never opened: not in the profile, still not offered
        (DISMISSER, 21, -2.0, 1),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "weight", "age"])
    frame = frame.assign(
        events=1,
        last_ts=[AS_OF - timedelta(days=age) for age in frame["age"]],
        read_fraction=1.0,
        is_read=frame["weight"] > 0,
        dismissed=frame["weight"] < 0,
    )
    return schemas.conform(frame, schemas.INTERACTIONS)


@pytest.fixture(scope="module")
def embeddings() -> pd.DataFrame:
    return encode_items(items(), None).frame


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return TrainingData(
        interactions=interactions(),
        items=items(),
        continue_reading=schemas.empty(schemas.CONTINUE_READING),
        as_of=AS_OF,
    )


@pytest.fixture(scope="module")
def model(embeddings: pd.DataFrame, data: TrainingData) -> ContentModel:
    return ContentModel(embeddings=embeddings).fit(data)


def recs_of(model: ContentModel, user: int, n: int = 20) -> pd.DataFrame:
    return model.recommend(np.array([user]), n)


def reasons_of(recs: pd.DataFrame) -> pd.Series:
    """The sentence of each candidate, rendered from its reason code and ref."""
    return render_frame(recs, catalogue_of(items()))


def test_a_cooking_reader_gets_cooking_first(model: ContentModel) -> None:
    recs = recs_of(model, COOK)
    assert list(recs.columns) == list(CANDIDATE_COLUMNS)
    assert set(recs["item_id"][:2]) == {3, 4}  # the two cooking issues they have not read
    assert recs["score"].is_monotonic_decreasing
    assert set(recs["source"]) == {"content"} and set(recs["reason_code"]) == {"similar_to_read"}


def test_read_seen_and_unpublished_items_are_never_recommended(model: ContentModel) -> None:
    cook, football = recs_of(model, COOK), recs_of(model, FOOTBALL)
    assert set(cook["item_id"]) == set(TOPIC) - {1, 2}
    assert set(football["item_id"]) == set(TOPIC) - {11, 12}
    assert recs_of(model, DISMISSER).empty  # no positive engagement, no profile


def test_the_reason_names_the_read_issue_closest_to_the_recommendation(
    model: ContentModel,
) -> None:
    recs = recs_of(model, MIXED)
    reasons = reasons_of(recs)
    expected = recs["item_id"].map(
        lambda item: TITLE[13] if TOPIC[item] == "football" else TITLE[1]
    )
    same_topic = recs["item_id"].map(TOPIC).isin(["cooking", "football"])
    assert (reasons[same_topic] == "Because you read “" + expected[same_topic] + "”").all()
    assert set(reasons) <= {
        f"Because you read “{TITLE[1]}”",
        f"Because you read “{TITLE[13]}”",
    }
    cook_recs = recs_of(model, COOK)
    cook = reasons_of(cook_recs).set_axis(cook_recs["item_id"])
    assert cook[3] == f"Because you read “{TITLE[2]}”"  # roast chicken: closer to curry than pasta


def test_a_recent_read_outweighs_an_old_one(embeddings: pd.DataFrame, data: TrainingData) -> None:
    frame = data.interactions[data.interactions["user_id"] == MIXED].copy()
    frame.loc[frame["item_id"] == 1, "last_ts"] = AS_OF - timedelta(days=20)
    recent = TrainingData(frame, data.items, data.continue_reading, data.as_of)
    recs = (
        ContentModel(embeddings=embeddings, half_life_days=2)
        .fit(recent)
        .recommend(np.array([MIXED]), 3)
    )
    assert [TOPIC[item] for item in recs["item_id"]] == ["football"] * 3


def test_similar_items_of_a_football_issue_are_football(model: ContentModel) -> None:
    similar = model.similar_items(11, 3)
    assert set(similar["similar_item_id"]) == {12, 13, 14}
    assert similar["score"].is_monotonic_decreasing
    table = model.more_like_this(3)
    assert len(table) == 3 * len(CATALOGUE)
    assert not (table["item_id"] == table["similar_item_id"]).any()
    assert UNPUBLISHED not in set(table["item_id"]) | set(table["similar_item_id"])
    pd.testing.assert_frame_equal(table[table["item_id"] == 11].reset_index(drop=True), similar)
    with pytest.raises(KeyError):
        model.similar_items(UNPUBLISHED, 3)


def test_hnsw_and_exact_search_agree_on_the_top_three(
    model: ContentModel, embeddings: pd.DataFrame, data: TrainingData
) -> None:
    hnsw = ContentModel(embeddings=embeddings, hnsw_threshold=1).fit(data)
    assert type(model.index).__name__ == "IndexFlatIP"
    assert type(hnsw.index).__name__ == "IndexHNSWFlat"
    exact, approximate = model.more_like_this(3), hnsw.more_like_this(3)
    assert exact["similar_item_id"].tolist() == approximate["similar_item_id"].tolist()
    users = np.array([COOK, MIXED, FOOTBALL])
    assert (
        model.recommend(users, 3)["item_id"].tolist()
        == hnsw.recommend(users, 3)["item_id"].tolist()
    )


@pytest.mark.parametrize("hnsw_threshold", [50_000, 1])
def test_save_and_load_give_identical_recommendations(
    embeddings: pd.DataFrame, data: TrainingData, tmp_path: Path, hnsw_threshold: int
) -> None:
    fitted = ContentModel(embeddings=embeddings, hnsw_threshold=hnsw_threshold).fit(data)
    fitted.save(tmp_path / "content")
    loaded = ContentModel.load(tmp_path / "content")
    users = np.array([COOK, MIXED, FOOTBALL, DISMISSER])
    assert type(loaded.index) is type(fitted.index)
    pd.testing.assert_frame_equal(loaded.recommend(users, 5), fitted.recommend(users, 5))
    pd.testing.assert_frame_equal(loaded.more_like_this(3), fitted.more_like_this(3))


def test_fit_without_embeddings_and_loading_another_artifact_version_fail_loudly(
    data: TrainingData, model: ContentModel, tmp_path: Path
) -> None:
    with pytest.raises(DataNotFound, match="embeddings"):
        ContentModel().fit(data)
    model.save(tmp_path)
    params = tmp_path / "params.json"
    current, older = (
        f'"artifact_version": {ARTIFACT_VERSION}',
        f'"artifact_version": {ARTIFACT_VERSION - 1}',
    )
    assert current in params.read_text()
    params.write_text(params.read_text().replace(current, older))
    with pytest.raises(SourceError, match="retrain"):
        ContentModel.load(tmp_path)
