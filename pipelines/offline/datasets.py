"""External data sets as our canonical tables, so real data flows through the same pipeline.

- MovieLens-100k (`u.data`, `u.item`, `u.genre`) -> ITEMS and a ratings table
  (user_id, item_id, ts, rating), in file order. The files are read where they are
  (default `../shared/datasets/movielens-100k` next to the repo); their licence forbids
  redistribution, so never copy them into the repository.
- MIND-format news (`news.tsv`, `behaviors.tsv`) -> ITEMS and USER_EVENTS, with the mapping from
  the source's string ids ("U123", "N456") to our int64 ids.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from inbo import schemas
from inbo.errors import SourceError
from inbo.settings import REPO_ROOT

log = logging.getLogger(__name__)

MOVIELENS_DIR = REPO_ROOT.parent / "shared" / "datasets" / "movielens-100k"
"""Where MovieLens-100k lives by default: outside the repository, read in place."""

RATING_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "ts", "rating")

MOVIELENS_PUBLISHED_FALLBACK = pd.Timestamp("1990-01-01", tz="UTC")
"""Release date given to the few MovieLens items that have none."""

NEWS_COLUMNS = (
    "news_id",
    "category",
    "subcategory",
    "title",
    "abstract",
    "url",
    "title_entities",
    "abstract_entities",
)
BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")


@dataclass(frozen=True)
class MovieLens:
    items: pd.DataFrame
    """ITEMS: one row per movie; category = first genre, tags = all genres."""
    ratings: pd.DataFrame
    """RATING_COLUMNS, one row per rating, in the order of `u.data`."""


@dataclass(frozen=True)
class Mind:
    items: pd.DataFrame
    """ITEMS: one row per news article."""
    events: pd.DataFrame
    """USER_EVENTS: impressions, clicks and history reads."""
    user_ids: pd.DataFrame
    """source_id -> user_id for every user in `behaviors.tsv`."""
    item_ids: pd.DataFrame
    """source_id -> item_id for every article in `news.tsv` or `behaviors.tsv`."""


def load_movielens(folder: Path | None = None) -> MovieLens:
    """Read MovieLens-100k from `folder` (default `MOVIELENS_DIR`)."""
    folder = Path(folder or MOVIELENS_DIR)
    _require(folder, ("u.data", "u.item", "u.genre"), "MovieLens-100k")
    data = pd.read_csv(
        folder / "u.data",
        sep="\t",
        header=None,
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"},
    )
    ratings = pd.DataFrame(
        {
            "user_id": data["user_id"],
            "item_id": data["item_id"],
            "ts": pd.to_datetime(data["timestamp"], unit="s", utc=True).astype(
                "datetime64[us, UTC]"
            ),
            "rating": data["rating"],
        }
    )
    items = movielens_items(folder)
    log.info("MovieLens: %d ratings, %d items from %s", len(ratings), len(items), folder)
    return MovieLens(items=items, ratings=ratings)


def movielens_items(folder: Path) -> pd.DataFrame:
    """ITEMS from `u.item` (latin-1, '|'-separated) with genre names from `u.genre`."""
    genres = pd.read_csv(
        folder / "u.genre", sep="|", header=None, names=["genre", "index"], encoding="latin-1"
    ).dropna()
    genre_names = genres.sort_values("index")["genre"].tolist()
    movies = pd.read_csv(
        folder / "u.item",
        sep="|",
        header=None,
        names=["item_id", "title", "release", "video_release", "url", *genre_names],
        encoding="latin-1",
        dtype={"title": "string", "release": "string"},
    )
    flags = movies[genre_names].to_numpy(dtype=bool)
    tags = [[genre_names[j] for j in np.flatnonzero(row)] or ["unknown"] for row in flags]
    published = pd.to_datetime(movies["release"], format="%d-%b-%Y", errors="coerce", utc=True)
    frame = pd.DataFrame(
        {
            "item_id": movies["item_id"].astype("int64"),
            "publisher_id": 0,
            "publisher": "MovieLens",
            "title": movies["title"].fillna("unknown"),
            "description": [
                f"{title}. Genres: {', '.join(names)}."
                for title, names in zip(movies["title"].fillna("unknown"), tags, strict=True)
            ],
            "category": [names[0] for names in tags],
            "tags": tags,
            "published_at": published.fillna(MOVIELENS_PUBLISHED_FALLBACK),
            "language": "en",
        }
    )
    return schemas.conform(frame, schemas.ITEMS)


def load_mind(folder: Path) -> Mind:
    """Read a MIND-format folder (`news.tsv`, `behaviors.tsv`, no header rows)."""
    folder = Path(folder)
    _require(folder, ("news.tsv", "behaviors.tsv"), "MIND")
    news = _read_tsv(folder / "news.tsv", NEWS_COLUMNS)
    behaviors = _read_tsv(folder / "behaviors.tsv", BEHAVIOR_COLUMNS)
    shown, history = _impressions(behaviors), _history(behaviors)
    item_ids = int_ids(pd.concat([news["news_id"], shown["news_id"], history["news_id"]]))
    user_ids = int_ids(behaviors["user_id"])
    unknown = set(shown["news_id"]).union(history["news_id"]) - set(news["news_id"])
    if unknown:
        log.warning(
            "MIND: %d article ids in behaviors.tsv are not in news.tsv; their events are kept "
            "but the articles have no ITEMS row - use the news.tsv of the same release",
            len(unknown),
        )
    events = _mind_events(shown, history, user_ids, item_ids)
    items = _mind_items(news, events, item_ids)
    log.info("MIND: %d events, %d items, %d users", len(events), len(items), len(user_ids))
    return Mind(items=items, events=events, user_ids=user_ids, item_ids=item_ids)


def int_ids(source_ids: pd.Series) -> pd.DataFrame:
    """A deterministic source_id -> int64 id table over the distinct ids.

    When every id is a letter prefix and digits ("U123", "N456") and stripping the prefix keeps
    them distinct, the id is the number. Otherwise each id is hashed (blake2b, 63 bits), which
    gives a string the same id in every file and every run.
    """
    distinct = pd.Series(sorted(set(source_ids.dropna().astype(str))), dtype="object")
    digits = distinct.str.extract(r"^[A-Za-z]*(\d{1,18})$", expand=False)
    if len(distinct) and digits.notna().all() and digits.astype("int64").is_unique:
        ids = digits.astype("int64")
    else:
        ids = distinct.map(_hash_id).astype("int64")
        if not ids.is_unique:
            raise SourceError("two source ids hash to the same int64 id; rename one of them")
    return pd.DataFrame({"source_id": distinct, "id": ids.to_numpy()})


def _hash_id(value: str) -> int:
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _require(folder: Path, names: tuple[str, ...], what: str) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise SourceError(f"{what} folder {folder} lacks {', '.join(missing)}")


def _read_tsv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.read_csv(
        path,
        sep="\t",
        header=None,
        names=list(columns),
        dtype=str,
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
    )
    return frame


def _mind_time(text: pd.Series) -> pd.Series:
    """MIND's "11/15/2019 8:55:22 AM" (no zone given; read as UTC)."""
    parsed = pd.to_datetime(text, format="%m/%d/%Y %I:%M:%S %p", utc=True)
    return parsed.astype("datetime64[us, UTC]")


def _impressions(behaviors: pd.DataFrame) -> pd.DataFrame:
    """One row per shown article: impression_id, user, time, 0-based position, news_id, click."""
    tokens = behaviors.assign(token=behaviors["impressions"].str.split()).explode("token")
    tokens = tokens[tokens["token"].notna() & (tokens["token"] != "")]
    parts = tokens["token"].str.rsplit("-", n=1, expand=True)
    label = parts[1] if 1 in parts.columns else pd.Series(None, index=tokens.index)
    return pd.DataFrame(
        {
            "impression_id": tokens["impression_id"].to_numpy(),
            "user": tokens["user_id"].to_numpy(),
            "ts": _mind_time(tokens["time"]).to_numpy(),
            "position": tokens.groupby(level=0).cumcount().to_numpy(),
            "news_id": parts[0].to_numpy(),
            "clicked": (label == "1").to_numpy(),
        }
    )


def _history(behaviors: pd.DataFrame) -> pd.DataFrame:
    """Distinct (user, news_id) pairs of the click histories."""
    pairs = behaviors.assign(news_id=behaviors["history"].str.split()).explode("news_id")
    pairs = pairs[pairs["news_id"].notna() & (pairs["news_id"] != "")]
    return pairs[["user_id", "news_id"]].rename(columns={"user_id": "user"}).drop_duplicates()


def _mind_events(
    shown: pd.DataFrame, history: pd.DataFrame, user_ids: pd.DataFrame, item_ids: pd.DataFrame
) -> pd.DataFrame:
    """Impressions and clicks at the impression's time; history clicks as reads before the log.

    MIND's history is what the user clicked before the logged period, with no times: each pair
    becomes one `read` (read_fraction unknown) one second before the earliest impression, so it
    is training history for any cutoff inside the log and never an evaluation target.
    """
    users = dict(zip(user_ids["source_id"], user_ids["id"], strict=True))
    items = dict(zip(item_ids["source_id"], item_ids["id"], strict=True))
    base = {
        "user_id": shown["user"].map(users),
        "item_id": shown["news_id"].map(items),
        "ts": shown["ts"],
        "session_id": shown["impression_id"],
        "position": shown["position"],
        "surface": "mind",
    }
    key = shown["impression_id"] + ":" + shown["position"].astype(str)
    impressions = pd.DataFrame(
        {**base, "event_id": "mind:" + key + ":impression", "event_type": "impression"}
    )
    clicks = pd.DataFrame({**base, "event_id": "mind:" + key + ":click", "event_type": "click"})[
        shown["clicked"].to_numpy()
    ]
    start = shown["ts"].min() if len(shown) else pd.Timestamp("1970-01-01", tz="UTC")
    reads = pd.DataFrame(
        {
            "user_id": history["user"].map(users),
            "item_id": history["news_id"].map(items),
            "ts": start - pd.Timedelta(seconds=1),
            "event_id": "mind:history:" + history["user"] + ":" + history["news_id"],
            "event_type": "read",
            "surface": "history",
        }
    )
    events = pd.concat([impressions, clicks, reads], ignore_index=True)
    for column in schemas.USER_EVENTS.names:
        if column not in events.columns:
            events[column] = None
    events = events.sort_values(["ts", "event_id"], kind="stable")
    return schemas.conform(events, schemas.USER_EVENTS)


def _mind_items(news: pd.DataFrame, events: pd.DataFrame, item_ids: pd.DataFrame) -> pd.DataFrame:
    """ITEMS from news.tsv. MIND has no publication time: an article's first appearance in the
    events stands in for it (the start of the log for articles that never appear)."""
    ids = news["news_id"].map(dict(zip(item_ids["source_id"], item_ids["id"], strict=True)))
    first_seen = events.groupby("item_id")["ts"].min()
    start = events["ts"].min() if len(events) else pd.Timestamp("1970-01-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "item_id": ids,
            "publisher_id": 0,
            "publisher": "MIND",
            "title": news["title"],
            "description": news["abstract"].replace("", None),
            "category": news["category"],
            "tags": [[s] if s else [] for s in news["subcategory"]],
            "published_at": ids.map(first_seen).fillna(start),
            "language": "en",
        }
    ).drop_duplicates("item_id")
    return schemas.conform(frame, schemas.ITEMS)
