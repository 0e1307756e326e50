"""Score: blend every model's candidates into each user's top-N, with no already-read items.

Order of precedence: continue reading first (the user asked for it by starting), then the
personalised candidates by score, then trending items to fill thin profiles. Every row keeps the
source that proposed it and a reason a person can read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from inbo import schemas
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from models.continue_reading import ContinueReadingModel
from models.popularity import PopularityModel
from pipelines.train import model_dir

log = logging.getLogger(__name__)

PRIORITY = {"continue_reading": 0, "popular_in_category": 1, "trending": 2}
"""Reason codes in blending order (lower first); a code missing here sorts after all of these."""


@dataclass(frozen=True)
class ScoreSummary:
    batch: str
    users: int
    rows: int
    fallback_items: int


def blend(candidates: pd.DataFrame, seen: pd.DataFrame, n: int) -> pd.DataFrame:
    """Each user's top `n` distinct items by (source priority, score), `seen` pairs removed."""
    kept = candidates.merge(seen.assign(_seen=True), on=["user_id", "item_id"], how="left")
    kept = kept[kept["_seen"].isna()].drop(columns="_seen")
    kept = kept.assign(_priority=kept["reason_code"].map(PRIORITY).fillna(len(PRIORITY)))
    kept = kept.sort_values(
        ["user_id", "_priority", "score", "item_id"], ascending=[True, True, False, True]
    ).drop_duplicates(["user_id", "item_id"])
    kept = kept[kept.groupby("user_id").cumcount() < n]
    ranked = kept.assign(rank=kept.groupby("user_id").cumcount() + 1)
    return schemas.conform(ranked.drop(columns="_priority"), schemas.RECOMMENDATIONS)


def with_trending(users: np.ndarray, trending: pd.DataFrame) -> pd.DataFrame:
    """The trending list offered to every user, as filler below their own candidates."""
    return trending.merge(pd.DataFrame({"user_id": users}), how="cross")


def score_users(interval_end: datetime, settings: Settings | None = None) -> ScoreSummary:
    """Write the batch's per-user top-N and fallback list to the lake."""
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    directory = model_dir(settings, batch)
    popularity = PopularityModel.load(directory / "popularity")
    started = ContinueReadingModel.load(directory / "continue_reading")
    interactions = lake.read(
        "features/interactions", {"batch": batch}, "part", schemas.INTERACTIONS
    )
    users = np.sort(interactions.loc[interactions["weight"] > 0, "user_id"].unique())
    seen = interactions.loc[
        interactions["is_read"] | interactions["dismissed"], ["user_id", "item_id"]
    ]
    trending = popularity.global_top(settings.top_n + settings.fallback_n)
    candidates = pd.concat(
        [
            started.recommend(users, settings.top_n),
            popularity.recommend(users, settings.top_n),
            with_trending(users, trending.head(settings.top_n * 2)),
        ],
        ignore_index=True,
    )
    recs = blend(candidates, seen, settings.top_n)
    fallback = trending.head(settings.fallback_n).assign(
        rank=np.arange(1, min(len(trending), settings.fallback_n) + 1)
    )
    lake.write(recs, "recs", "part", {"batch": batch}, schemas.RECOMMENDATIONS)
    lake.write(fallback, "recs_fallback", "part", {"batch": batch})
    summary = ScoreSummary(
        batch=batch,
        users=int(recs["user_id"].nunique()),
        rows=len(recs),
        fallback_items=len(fallback),
    )
    log.info("scored %s", summary)
    return summary
