"""Dataset adapters: MovieLens-100k read in place (skipped when absent), MIND on a tiny sample."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from inbo import schemas
from inbo.errors import SourceError
from pipelines.offline.datasets import MOVIELENS_DIR, MovieLens, int_ids, load_mind, load_movielens

needs_movielens = pytest.mark.skipif(
    not (MOVIELENS_DIR / "u.data").is_file(),
    reason=f"MovieLens-100k is not at {MOVIELENS_DIR} (it is read in place, never copied here)",
)


@pytest.fixture(scope="module")
def movielens() -> MovieLens:
    return load_movielens()


@needs_movielens
def test_movielens_has_the_published_counts(movielens: MovieLens) -> None:
    ratings = movielens.ratings
    assert len(ratings) == 100_000
    assert ratings["user_id"].nunique() == 943
    assert ratings["item_id"].nunique() == 1682
    assert len(movielens.items) == 1682
    assert set(ratings["rating"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert str(ratings["ts"].dt.tz) == "UTC"
    assert ratings["ts"].min() == pd.Timestamp("1997-09-20 03:05:10", tz="UTC")
    # file order is kept: it decides which rows the seeded split sends where
    assert ratings.iloc[0][["user_id", "item_id"]].tolist() == [196, 242]


@needs_movielens
def test_movielens_items_are_canonical(movielens: MovieLens) -> None:
    items = movielens.items.set_index("item_id")
    assert list(movielens.items.columns) == schemas.ITEMS.names
    toy_story = items.loc[1]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["category"] == "Animation"
    assert list(toy_story["tags"]) == ["Animation", "Children's", "Comedy"]
    assert toy_story["description"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert toy_story["published_at"] == pd.Timestamp("1995-01-01", tz="UTC")
    assert toy_story["publisher"] == "MovieLens"
    assert items.loc[267, "published_at"] == pd.Timestamp("1990-01-01", tz="UTC")  # no date
    assert items["publisher_id"].eq(0).all()
    assert items["language"].eq("en").all()


def test_a_missing_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"lacks u\.data"):
        load_movielens(tmp_path)
    with pytest.raises(SourceError, match=r"lacks news\.tsv"):
        load_mind(tmp_path)


NEWS = [
    ("N1", "sports", "football_nfl", "Title one", "Abstract one", "http://a", "[]", "[]"),
    ("N2", "news", "newsus", 'A "quoted" title', "", "http://b", "[]", "[]"),
    ("N3", "finance", "markets", "Title three", "Abstract", "http://c", '[{"Label": "X"}]', "[]"),
    ("N4", "sports", "golf", "Title four", "Abstract four", "http://d", "[]", "[]"),
    ("N5", "music", "", "Never shown", "", "http://e", "[]", "[]"),
]
BEHAVIORS = [
    ("1", "U10", "11/15/2019 8:55:22 AM", "N1 N2", "N3-1 N4-0"),
    ("2", "U11", "11/15/2019 9:00:00 AM", "", "N1-0 N3-0 N4-1"),
    ("3", "U10", "11/16/2019 1:00:00 PM", "N1 N2", "N4-1"),
]


def write_mind(
    folder: Path, news: Sequence[tuple[str, ...]], behaviors: Sequence[tuple[str, ...]]
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "news.tsv").write_text("".join("\t".join(row) + "\n" for row in news))
    (folder / "behaviors.tsv").write_text("".join("\t".join(row) + "\n" for row in behaviors))
    return folder


def test_mind_becomes_items_and_events(tmp_path: Path) -> None:
    mind = load_mind(write_mind(tmp_path / "mind", NEWS, BEHAVIORS))
    events = mind.events
    assert list(events.columns) == schemas.USER_EVENTS.names
    assert events["event_id"].is_unique
    # 2 + 3 + 1 shown articles; 3 clicks; U10's history N1, N2 once although listed twice
    assert events["event_type"].value_counts().to_dict() == {"impression": 6, "click": 3, "read": 2}
    clicks = events[events["event_type"] == "click"]
    assert sorted(zip(clicks["user_id"], clicks["item_id"], strict=True)) == [
        (10, 3),
        (10, 4),
        (11, 4),
    ]
    shown = events[events["event_type"] == "impression"]
    second = shown[shown["session_id"] == "2"].sort_values("position")
    assert second["item_id"].tolist() == [1, 3, 4]
    assert second["position"].tolist() == [0, 1, 2]
    first_impression = pd.Timestamp("2019-11-15 08:55:22", tz="UTC")
    reads = events[events["event_type"] == "read"]
    assert sorted(reads["item_id"]) == [1, 2]
    assert (reads["ts"] == first_impression - pd.Timedelta(seconds=1)).all()
    assert reads["read_fraction"].isna().all()


def test_mind_items_are_canonical(tmp_path: Path) -> None:
    mind = load_mind(write_mind(tmp_path / "mind", NEWS, BEHAVIORS))
    items = mind.items.set_index("item_id")
    assert list(mind.items.columns) == schemas.ITEMS.names
    assert sorted(items.index) == [1, 2, 3, 4, 5]
    assert items.loc[2, "title"] == 'A "quoted" title'
    assert pd.isna(items.loc[2, "description"])
    assert list(items.loc[1, "tags"]) == ["football_nfl"]
    assert list(items.loc[5, "tags"]) == []
    start = pd.Timestamp("2019-11-15 08:55:22", tz="UTC")
    # first appearance stands in for the missing publication time
    assert items.loc[3, "published_at"] == start
    assert items.loc[1, "published_at"] == start - pd.Timedelta(seconds=1)  # history only
    assert items.loc[5, "published_at"] == start - pd.Timedelta(seconds=1)  # never shown


def test_mind_ids_strip_a_numeric_prefix(tmp_path: Path) -> None:
    mind = load_mind(write_mind(tmp_path / "mind", NEWS, BEHAVIORS))
    assert mind.user_ids.set_index("source_id")["id"].to_dict() == {"U10": 10, "U11": 11}
    assert mind.item_ids.set_index("source_id")["id"].to_dict()["N4"] == 4


def test_non_numeric_ids_are_hashed_stably() -> None:
    first = int_ids(pd.Series(["user-a", "user-b", "user-a"]))
    again = int_ids(pd.Series(["user-b", "user-a"]))
    assert first["source_id"].tolist() == ["user-a", "user-b"]
    assert first["id"].is_unique
    assert (first["id"] >= 0).all()
    assert first.equals(again)


def test_ids_that_collide_once_stripped_are_hashed() -> None:
    table = int_ids(pd.Series(["N01", "N1"]))
    assert table["id"].is_unique
    assert not set(table["id"]) & {1}


def test_articles_missing_from_news_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    behaviors = [("1", "U10", "11/15/2019 8:55:22 AM", "", "N9-1")]
    with caplog.at_level(logging.WARNING, logger="pipelines.offline.datasets"):
        mind = load_mind(write_mind(tmp_path / "mind", NEWS, behaviors))
    assert "not in news.tsv" in caplog.text
    assert 9 in set(mind.events["item_id"])
    assert 9 not in set(mind.items["item_id"])
