"""Item embeddings with the real packaged model: shape, topic structure, the cache, the lake table.

The catalogue below is also the shared fixture of the content model's tests.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.embeddings import (
    EMBEDDING_DIM,
    MODEL_NAME,
    build_embeddings,
    content_hash,
    encode_items,
    item_text,
    load_encoder,
)
from inbo import schemas, tables
from inbo.lake import Lake, batch_key
from inbo.settings import Settings

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)

CATALOGUE: list[tuple[int, str, str, str]] = [
    (1, "cooking", "Five weeknight pasta recipes",
     "Quick tomato, garlic and basil sauces you can cook in twenty minutes."),
    (2, "cooking", "A cook's guide to curry",
     "Toast the spices, fry the onions and simmer a chicken curry for dinner."),
    (3, "cooking", "The secret to a perfect roast chicken",
     "Brining, seasoning and resting the bird for juicy meat and crispy skin."),
    (4, "cooking", "Spring vegetable soups",
     "Simmer leeks, peas and asparagus into a light broth for a healthy dinner."),
    (11, "football", "Champions League quarter-final preview",
     "Tactics, injuries and predicted line-ups for this week's matches."),
    (12, "football", "Why the striker's transfer collapsed",
     "The club and the player's agent could not agree on wages before the deadline."),
    (13, "football", "Premier League title race heats up",
     "Three points separate the top two teams after a dramatic weekend of football."),
    (14, "football", "A goalkeeper's guide to saving penalties",
     "Reading the kicker's run-up and diving at the right moment."),
    (21, "astronomy", "Jupiter at opposition this month",
     "The gas giant and its moons are at their brightest; spot them with binoculars."),
    (22, "astronomy", "What the James Webb telescope saw in a distant galaxy",
     "Infrared images reveal stars forming in clouds of dust and gas."),
    (23, "astronomy", "A beginner's guide to the night sky",
     "Find constellations, planets and the Milky Way from a dark site."),
    (24, "astronomy", "Why black holes evaporate",
     "Hawking radiation, event horizons and what happens to information."),
]  # fmt: skip
"""(item_id, topic, title, description): four issues in each of three topics."""


def catalogue_items(rows: list[tuple[int, str, str, str]] = CATALOGUE) -> pd.DataFrame:
    """The catalogue as an ITEMS table, every issue published the day before `AS_OF`."""
    frame = pd.DataFrame(rows, columns=["item_id", "category", "title", "description"])
    frame = frame.assign(
        publisher_id=1,
        publisher="INBO Weekly",
        tags=[[] for _ in rows],
        published_at=AS_OF - timedelta(days=1),
        language="en",
    )
    return schemas.conform(frame, schemas.ITEMS)


def matrix(frame: pd.DataFrame) -> np.ndarray:
    return np.stack(frame["embedding"].to_numpy())


@pytest.fixture(scope="module")
def encoder() -> Any:
    return load_encoder()


@pytest.fixture(scope="module")
def encoded(encoder: Any) -> pd.DataFrame:
    return encode_items(catalogue_items(), None, encoder).frame


def test_item_text_joins_title_and_description_and_skips_missing_parts() -> None:
    assert item_text("Title", "Body.") == "Title. Body."
    assert item_text("Title", None) == "Title"
    assert item_text(" Title ", "") == "Title"
    assert content_hash("a", "text") != content_hash("b", "text")
    assert content_hash("a", "text") == content_hash("a", "text")


def test_importing_the_module_loads_no_model_library() -> None:
    """DAG files and the CLI import feature modules; torch must wait until a vector is needed."""
    probe = (
        "import sys, features.embeddings; "
        "print([m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_vectors_are_384_dimensional_float32_and_unit_length(encoded: pd.DataFrame) -> None:
    vectors = matrix(encoded)
    assert vectors.shape == (len(CATALOGUE), EMBEDDING_DIM)
    assert vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(len(CATALOGUE)), abs=1e-5)
    assert set(encoded["model"]) == {MODEL_NAME}
    assert encoded["item_id"].tolist() == sorted(row[0] for row in CATALOGUE)


def test_issues_of_a_topic_are_closer_to_each_other_than_to_other_topics(
    encoded: pd.DataFrame,
) -> None:
    topics = np.array([row[1] for row in sorted(CATALOGUE)])
    vectors = matrix(encoded)
    similarity = vectors @ vectors.T
    same = topics[:, None] == topics[None, :]
    off_diagonal = ~np.eye(len(topics), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.1
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    assert (topics[nearest] == topics).all()


def test_cache_reencodes_only_the_changed_item(
    encoder: Any, encoded: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    real_encode = encoder.encode

    def spy(texts: list[str], **kwargs: Any) -> Any:
        sent.extend(texts)
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(encoder, "encode", spy)
    items = catalogue_items()
    items.loc[items["item_id"] == 3, "title"] = "The secret to a perfect roast duck"

    result = encode_items(items, encoded, encoder)

    assert (result.encoded, result.reused) == (1, len(CATALOGUE) - 1)
    assert sent == [item_text("The secret to a perfect roast duck", CATALOGUE[2][3])]
    changed = (result.frame["item_id"] == 3).to_numpy()
    assert np.array_equal(matrix(result.frame)[~changed], matrix(encoded)[~changed])
    assert not np.allclose(matrix(result.frame)[changed], matrix(encoded)[changed])
    assert (
        result.frame.loc[changed, "content_hash"].item()
        != encoded.loc[changed, "content_hash"].item()
    )


def test_build_embeddings_reuses_the_previous_batch_and_is_idempotent(
    settings: Settings, encoder: Any
) -> None:
    lake = Lake(settings.lake)
    first, second = AS_OF, AS_OF + timedelta(days=1)
    lake.write_batch(catalogue_items(), tables.ITEMS, batch_key(first))
    changed = [*CATALOGUE[:-1], (24, "astronomy", "Why black holes evaporate slowly", "")]
    grown = catalogue_items([*changed, (25, "astronomy", "Saturn's rings", "Ice and rock.")])
    lake.write_batch(grown, tables.ITEMS, batch_key(second))

    stats_first = build_embeddings(first, settings)
    stats_second = build_embeddings(second, settings)
    table = lake.read_batch(tables.EMBEDDINGS, batch_key(second))
    rerun = build_embeddings(second, settings)

    assert (stats_first.encoded, stats_first.reused, stats_first.cache_batch) == (12, 0, None)
    assert (stats_second.encoded, stats_second.reused) == (2, 11)
    assert stats_second.cache_batch == batch_key(first)
    assert (rerun.encoded, rerun.reused, rerun.cache_batch) == (2, 11, batch_key(first))
    assert table["item_id"].tolist() == [*sorted(r[0] for r in CATALOGUE), 25]
    assert matrix(table).shape == (13, EMBEDDING_DIM) and matrix(table).dtype == np.float32
    again = lake.read_batch(tables.EMBEDDINGS, batch_key(second))
    pd.testing.assert_frame_equal(again.drop(columns="embedding"), table.drop(columns="embedding"))
    assert np.array_equal(matrix(again), matrix(table))
