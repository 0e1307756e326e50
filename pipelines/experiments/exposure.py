"""Per-user experiment metrics from the lake's canonical events: what an analysis compares.

A user is exposed to an experiment once they were shown at least one item of one of its
variants: a feed impression whose `rec_variant` is `<experiment>/<variant>`. Their impressions
and clicks count the list's slots (events carrying the label); reads, dismissals and
unsubscribes count everything the user did in the window, since a better list shows in them
wherever the user goes next.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from features.interactions import load_events
from inbo.lake import Lake

COUNTS: dict[str, str] = {
    "impressions": "impression",
    "clicks": "click",
    "reads": "read",
    "dismissals": "dismiss",
    "unsubscribes": "unsubscribe",
}
"""Per-user count -> the canonical event type it counts."""
LIST_COUNTS = ("impressions", "clicks")
"""Counts of the list's own slots: only events that carry a variant label."""
COLUMNS = ["user_id", "event_type", "ts", "rec_variant"]


def window_events(lake: Lake, start: datetime, end: datetime) -> pd.DataFrame:
    events, _ = load_events(lake, start, end, columns=COLUMNS)
    return events


def user_counts(events: pd.DataFrame, labelled: pd.Series | None = None) -> pd.DataFrame:
    """One row per user with every count of `COUNTS` (0 where none); list counts take only the
    rows where `labelled` is true (default: every row)."""
    in_list = pd.Series(True, index=events.index) if labelled is None else labelled
    columns = {}
    for name, kind in COUNTS.items():
        rows = events["event_type"] == kind
        if name in LIST_COUNTS:
            rows &= in_list
        columns[name] = events.loc[rows].groupby("user_id").size()
    frame = pd.DataFrame(columns).fillna(0).astype("int64")
    frame.index.name = "user_id"
    return frame


def exposed_users(events: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Users shown the experiment's list, with their variant (their first label, which the hash
    keeps fixed) and their counts."""
    prefix = f"{experiment}/"
    labelled = events["rec_variant"].fillna("").str.startswith(prefix)
    shown = events[labelled & (events["event_type"] == "impression")]
    variant = (
        shown.sort_values("ts").groupby("user_id")["rec_variant"].first().str.removeprefix(prefix)
    )
    counts = user_counts(events[events["user_id"].isin(variant.index)], labelled)
    return counts.reindex(variant.index, fill_value=0).assign(variant=variant).reset_index()


def pre_period_counts(before: pd.DataFrame) -> pd.DataFrame:
    """Per user, the counts of the pre-period's events as `pre_<count>` (CUPED's covariates)."""
    return user_counts(before).add_prefix("pre_")


def with_pre_period(users: pd.DataFrame, pre: pd.DataFrame) -> pd.DataFrame:
    """`users` with the `pre_<count>` columns of `pre_period_counts`, 0 for users who did
    nothing then."""
    joined = users.merge(pre, left_on="user_id", right_index=True, how="left")
    return joined.fillna({column: 0 for column in pre.columns}).astype(
        {column: "int64" for column in pre.columns}
    )
