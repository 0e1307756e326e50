"""The lake's newest item and user snapshots, for display: what `inbo recs` and `inbo similar` show.

The published payload carries ids and reason codes only; a frontend has the titles in its own
catalogue. The CLI renders them from the newest validated snapshot instead.
"""

from __future__ import annotations

import pandas as pd

from inbo import tables
from inbo.lake import Lake
from inbo.reasons import catalogue_of
from inbo.settings import Settings


def latest_snapshot(settings: Settings, table: tables.Table, *columns: str) -> pd.DataFrame:
    """`columns` of the newest batch file of a dimension table, indexed by the first (empty
    when no batch has been validated yet)."""
    lake = Lake(settings.lake)
    snapshots = lake.files(table.path)
    if not snapshots:
        return pd.DataFrame(columns=list(columns)).set_index(columns[0])
    return lake.read_files(snapshots[-1:], columns=list(columns)).set_index(columns[0])


def catalogue(settings: Settings) -> dict[int, dict[str, str]]:
    """The newest items snapshot as the catalogue reason texts are rendered with."""
    items = latest_snapshot(settings, tables.ITEMS, "item_id", "title", "publisher", "category")
    return catalogue_of(items.reset_index())


def titles(settings: Settings) -> dict[int, str]:
    return {
        int(k): str(v)
        for k, v in latest_snapshot(settings, tables.ITEMS, "item_id", "title")["title"].items()
    }


def known_user(settings: Settings, user_id: int) -> bool:
    """Whether the newest users snapshot has the user (a frontend would show them the fallback)."""
    return user_id in latest_snapshot(settings, tables.USERS, "user_id").index
