"""Ranking features: what the reranker knows about a (user, item) candidate at a cutoff `as_of`.

Every feature is computed from events strictly before `as_of`, by the same functions whether the
cutoff is a past day (training examples) or tonight's batch end (scoring), so the model trains on
exactly the kind of row it will score. Only the labels of `training_examples` look at events at
or after the cutoff. Events are expected deduplicated by `event_id` (as `load_events` returns
them) and to cover at least `HISTORY_DAYS` before the cutoff; shorter history just means smaller
counts, the same at training and at scoring only if both see the same span.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from features.interactions import EVENT_WEIGHTS

log = logging.getLogger(__name__)

WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30)
"""Windows of the item popularity (clicks) and click-through-rate features."""

HISTORY_DAYS = 30
"""How far back activity, affinities, read-through and past impressions look."""

"""Lake table of every item's `ITEM_FEATURES` at a batch end, computed once per batch."""

CTR_PRIOR_IMPRESSIONS = 20.0
"""An item's CTR starts at the window's global CTR, worth this many impressions: a new item with
one impression and one click is not a 100% item."""

READ_PRIOR_READERS = 5.0
"""An item's read-through starts at the global mean read fraction, worth this many readers."""

DEFAULT_CTR = 0.05
"""The CTR prior when a window has no impressions at all to estimate one from."""

DEFAULT_READ_THROUGH = 0.5
"""The read-through prior when nobody read anything in the history window."""

FRESH_HOURS = 7 * 24
"""`is_fresh` for a candidate that candidate generation did not flag: published this recently."""

POSITIVE_EVENTS: tuple[str, ...] = tuple(kind for kind, w in EVENT_WEIGHTS.items() if w > 0)
"""Events that show interest (the positive weights of the interaction table), for affinities."""

ENGAGED_EVENTS: tuple[str, ...] = ("click", "read")
"""What counts as engaging with an impression when labelling training examples."""

READ_THROUGH_AT = 0.5
"""A read at least this far through the issue is the best label (2); a click alone is 1."""

LABEL = "label"

CANDIDATE_SCORES: tuple[str, ...] = (
    "als_score",
    "content_score",
    "popularity_score",
    "category_score",
    "continue_reading",
)
"""Scores from candidate generation; NaN where that source did not propose the item."""

CANDIDATE_INPUT: tuple[str, ...] = (
    "user_id",
    "item_id",
    *CANDIDATE_SCORES,
    "is_fresh",
    "n_sources",
)
"""The columns candidate generation hands to `ranking_features`."""

ITEM_FEATURES: tuple[str, ...] = (
    *(f"item_clicks_{days}d" for days in WINDOWS_DAYS),
    *(f"item_ctr_{days}d" for days in WINDOWS_DAYS),
    "item_age_hours",
    f"item_readers_{HISTORY_DAYS}d",
    f"item_read_through_{HISTORY_DAYS}d",
)
USER_FEATURES: tuple[str, ...] = (
    "user_events_7d",
    f"user_events_{HISTORY_DAYS}d",
    f"user_active_days_{HISTORY_DAYS}d",
)
PAIR_FEATURES: tuple[str, ...] = (
    "user_category_affinity",
    "user_publisher_affinity",
    "subscribed",
    f"user_item_impressions_{HISTORY_DAYS}d",
)

FEATURES: tuple[str, ...] = (
    *CANDIDATE_SCORES,
    "is_fresh",
    "n_sources",
    *ITEM_FEATURES,
    *USER_FEATURES,
    *PAIR_FEATURES,
)
"""The reranker's input columns, in the order the model sees them."""

CandidatesFn = Callable[[datetime], pd.DataFrame]
"""`candidates_fn(cutoff)`: candidate scores as candidate generation would have made them then."""


def utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    """`moment` as a UTC timestamp; a naive moment is taken to be UTC already."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def history(
    events: pd.DataFrame,
    as_of: datetime,
    days: float | None = None,
    *,
    kinds: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Events strictly before `as_of` (no older than `days`, of `kinds`): all a feature sees.

    Only `columns` are copied: at a million users a full-width copy of 30 days of events is
    gigabytes, and each feature reads two or three columns.
    """
    end = utc(as_of)
    keep = events["ts"] < end
    if days is not None:
        keep &= events["ts"] >= end - pd.Timedelta(days=days)
    if kinds is not None:
        keep &= events["event_type"].isin(kinds)
    return events.loc[keep, list(columns) if columns is not None else events.columns]


def smoothed_rate(
    hits: pd.Series, trials: pd.Series, prior_rate: float, prior_weight: float
) -> pd.Series:
    """(hits + w * p) / (trials + w): a rate pulled towards the prior when there is little data."""
    return (hits + prior_weight * prior_rate) / (trials + prior_weight)


# -- item features -------------------------------------------------------------------------------


def item_window_features(
    events: pd.DataFrame, as_of: datetime, days: int, item_ids: pd.Index
) -> pd.DataFrame:
    """Clicks and smoothed CTR per item over the `days` before `as_of`, for every id in `item_ids`."""
    recent = history(
        events, as_of, days, kinds=("impression", "click"), columns=("item_id", "event_type")
    )
    counts = (
        recent.groupby(["item_id", "event_type"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=["impression", "click"], fill_value=0)
    )
    shown, clicked = counts["impression"].sum(), counts["click"].sum()
    prior = clicked / shown if shown > 0 else DEFAULT_CTR  # over every item, not just these
    counts = counts.reindex(item_ids, fill_value=0)
    ctr = smoothed_rate(counts["click"], counts["impression"], prior, CTR_PRIOR_IMPRESSIONS)
    return pd.DataFrame(
        {f"item_clicks_{days}d": counts["click"].astype(float), f"item_ctr_{days}d": ctr},
        index=item_ids,
    )


def item_read_features(events: pd.DataFrame, as_of: datetime, item_ids: pd.Index) -> pd.DataFrame:
    """Distinct readers and smoothed mean read fraction (read-through) per item."""
    reads = history(
        events,
        as_of,
        HISTORY_DAYS,
        kinds=("read",),
        columns=("user_id", "item_id", "read_fraction"),
    )
    furthest = reads.groupby(["user_id", "item_id"])["read_fraction"].max().fillna(0.0)
    per_item = furthest.groupby(level="item_id").agg(["size", "sum"])
    per_item = per_item.reindex(item_ids, fill_value=0.0)
    prior = float(furthest.mean()) if len(furthest) else DEFAULT_READ_THROUGH
    return pd.DataFrame(
        {
            f"item_readers_{HISTORY_DAYS}d": per_item["size"].astype(float),
            f"item_read_through_{HISTORY_DAYS}d": smoothed_rate(
                per_item["sum"], per_item["size"], prior, READ_PRIOR_READERS
            ),
        },
        index=item_ids,
    )


def item_age_hours(items: pd.DataFrame, as_of: datetime, item_ids: pd.Index) -> pd.Series:
    """Hours from publication to `as_of`; NaN for an item the catalogue does not know."""
    published = items.drop_duplicates("item_id").set_index("item_id")["published_at"]
    age = (utc(as_of) - published.reindex(item_ids)).dt.total_seconds() / 3600.0
    return age.rename("item_age_hours")


def item_features(
    events: pd.DataFrame, items: pd.DataFrame, as_of: datetime, item_ids: pd.Index
) -> pd.DataFrame:
    """Every item feature for `item_ids`, one row per item, columns `ITEM_FEATURES`."""
    parts = [item_window_features(events, as_of, days, item_ids) for days in WINDOWS_DAYS]
    parts += [item_age_hours(items, as_of, item_ids), item_read_features(events, as_of, item_ids)]
    return pd.concat(parts, axis=1)[list(ITEM_FEATURES)]


# -- user and (user, item) features ---------------------------------------------------------------


def user_features(events: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """Activity per user: events in the last 7 and 30 days and distinct active days."""
    recent = history(events, as_of, HISTORY_DAYS, columns=("user_id", "ts"))
    last_week = history(recent, as_of, 7)
    return pd.DataFrame(
        {
            "user_events_7d": last_week.groupby("user_id").size(),
            f"user_events_{HISTORY_DAYS}d": recent.groupby("user_id").size(),
            f"user_active_days_{HISTORY_DAYS}d": recent["ts"]
            .dt.floor("D")
            .groupby(recent["user_id"])
            .nunique(),
        }
    ).astype(float)


def affinity(events: pd.DataFrame, items: pd.DataFrame, as_of: datetime, key: str) -> pd.DataFrame:
    """Share of each user's positive events (on known items) that fall on each value of `key`.

    Columns `user_id`, `key`, `share`; `key` is an item column such as `category` or `publisher_id`.
    """
    positive = history(
        events, as_of, HISTORY_DAYS, kinds=POSITIVE_EVENTS, columns=("user_id", "item_id")
    )
    keyed = positive.merge(items[["item_id", key]].drop_duplicates("item_id"), on="item_id")
    counts = keyed.groupby(["user_id", key]).size()
    share = counts / counts.groupby(level="user_id").transform("sum")
    return share.rename("share").reset_index()


def active_subscriptions(subscriptions: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """(user_id, publisher_id) pairs subscribed at `as_of`: started before, not yet ended."""
    moment = utc(as_of)
    ended = subscriptions["unsubscribed_at"]
    active = (subscriptions["subscribed_at"] < moment) & (ended.isna() | (ended > moment))
    return subscriptions.loc[active, ["user_id", "publisher_id"]].drop_duplicates()


def past_impressions(events: pd.DataFrame, as_of: datetime) -> pd.Series:
    """How often each (user, item) was shown in the history window: fatigue for a repeated item."""
    shown = history(
        events, as_of, HISTORY_DAYS, kinds=("impression",), columns=("user_id", "item_id")
    )
    return shown.groupby(["user_id", "item_id"]).size().rename(PAIR_FEATURES[-1])


def with_candidate_columns(candidates: pd.DataFrame) -> pd.DataFrame:
    """`candidates` with every `CANDIDATE_INPUT` column: a score nobody gave is NaN.

    `n_sources` missing (a candidate no source proposed, or a frame without the column) is the
    number of scores present; `is_fresh` missing is filled from the item's age later.
    """
    frame = candidates.reset_index(drop=True)
    frame = frame.assign(**{name: np.nan for name in CANDIDATE_SCORES if name not in frame})
    present = frame[list(CANDIDATE_SCORES)].notna().sum(axis=1)
    sources = frame["n_sources"] if "n_sources" in frame else pd.Series(np.nan, frame.index)
    fresh = frame["is_fresh"] if "is_fresh" in frame else pd.Series(np.nan, frame.index)
    return frame.assign(
        n_sources=sources.astype(float).fillna(present), is_fresh=fresh.astype(float)
    )


def ranking_features(
    candidates: pd.DataFrame,
    events: pd.DataFrame,
    items: pd.DataFrame,
    subscriptions: pd.DataFrame,
    as_of: datetime,
    item_table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The candidates (same rows, same order) with every column of `FEATURES` added.

    Only events strictly before `as_of` are read (each feature cuts its own window, so no copy of
    the whole history is made); the subscription flag is the state at `as_of`.
    `item_table` (from `catalogue_item_features` on every user's events) lets `events` hold only
    the candidates' users, as a user shard does: user and pair features need no one else's.
    """
    frame = with_candidate_columns(candidates)
    ids = pd.Index(frame["item_id"].unique(), name="item_id")
    if item_table is None:
        item_table = item_features(events, items, as_of, ids)
    frame = frame.join(item_table, on="item_id")
    fresh = frame["item_age_hours"].between(0, FRESH_HOURS).astype(float)
    frame["is_fresh"] = frame["is_fresh"].fillna(fresh)
    frame = frame.join(user_features(events, as_of), on="user_id")
    pairs = pair_features(frame[["user_id", "item_id"]], events, items, subscriptions, as_of)
    frame = pd.concat([frame, pairs], axis=1)
    filled = frame.fillna({name: 0.0 for name in (*USER_FEATURES, *PAIR_FEATURES)})
    kept = [name for name in frame.columns if name not in FEATURES]
    return filled[[*kept, *FEATURES]]


def catalogue_item_features(
    events: pd.DataFrame, items: pd.DataFrame, as_of: datetime
) -> pd.DataFrame:
    """`item_features` of every item in the catalogue or the events, computed once for all shards.

    Each item's row is the same whichever other ids are asked for, so a lookup in this table
    equals the per-candidate computation of `ranking_features`.
    """
    ids = pd.Index(
        np.union1d(items["item_id"].to_numpy(), events["item_id"].to_numpy()), name="item_id"
    )
    return item_features(events, items, as_of, ids)


def catalogue_keys(item_ids: pd.Series, items: pd.DataFrame) -> pd.DataFrame:
    """Each row's item category and publisher id (NA, with a warning, for an unknown item)."""
    catalogue = items.drop_duplicates("item_id").set_index("item_id")
    keys = pd.DataFrame(
        {
            "category": item_ids.map(catalogue["category"]),
            "publisher_id": item_ids.map(catalogue["publisher_id"]).astype("Int64"),
        }
    )
    unknown = int(keys["category"].isna().sum())
    if unknown:
        log.warning("%d candidate(s) not in the catalogue: their item features are NaN", unknown)
    return keys


def pair_features(
    pairs: pd.DataFrame,
    events: pd.DataFrame,
    items: pd.DataFrame,
    subscriptions: pd.DataFrame,
    as_of: datetime,
) -> pd.DataFrame:
    """User x item features for (user_id, item_id) `pairs`; NaN where the user has no history."""
    users, keys = pairs["user_id"], catalogue_keys(pairs["item_id"], items)
    subscribed = active_subscriptions(subscriptions, as_of).assign(share=1.0)
    shown = past_impressions(events, as_of)
    index = pd.MultiIndex.from_frame(pairs)
    return pd.DataFrame(
        {
            "user_category_affinity": _lookup(
                affinity(events, items, as_of, "category"), users, keys["category"]
            ),
            "user_publisher_affinity": _lookup(
                affinity(events, items, as_of, "publisher_id"), users, keys["publisher_id"]
            ),
            "subscribed": _lookup(subscribed, users, keys["publisher_id"]),
            PAIR_FEATURES[-1]: shown.reindex(index).to_numpy(dtype=float),
        },
        index=pairs.index,
    )


def _lookup(table: pd.DataFrame, users: pd.Series, values: pd.Series) -> np.ndarray:
    """`table`'s `share` at each (user, value) pair; `table` is (user_id, <key>, share)."""
    share = table.set_index([table.columns[0], table.columns[1]])["share"]
    pairs = pd.MultiIndex.from_arrays([users, values])
    return share.reindex(pairs).to_numpy(dtype=float)


# -- training examples ------------------------------------------------------------------------------


def impression_labels(
    events: pd.DataFrame,
    items: pd.DataFrame,
    cutoff: datetime,
    label_days: float,
    graded: bool = True,
) -> pd.DataFrame:
    """One row per (user, item) first shown in [cutoff, cutoff + label_days), with its label.

    Label 2: a read at least `READ_THROUGH_AT` through followed the impression in the window; 1: a
    click or a shorter read did; 0: shown, not engaged. `graded=False` caps labels at 1. Items
    published at or after the cutoff are left out: tonight's candidates can only be issues already
    published, so the ranker should not learn on ones it will never be asked about.
    """
    start = utc(cutoff)
    window = events[
        (events["ts"] >= start) & (events["ts"] < start + pd.Timedelta(days=label_days))
    ]
    shown = window[window["event_type"] == "impression"]
    shown = shown.groupby(["user_id", "item_id"], as_index=False)["ts"].min()
    published = items.loc[items["published_at"] < start, "item_id"]
    shown = shown[shown["item_id"].isin(published)]
    engaged = window[window["event_type"].isin(ENGAGED_EVENTS)]
    deep = (engaged["event_type"] == "read") & (engaged["read_fraction"] >= READ_THROUGH_AT)
    engaged = engaged.assign(grade=np.where(deep.fillna(False), 2, 1))
    pairs = shown.merge(
        engaged[["user_id", "item_id", "ts", "grade"]],
        on=["user_id", "item_id"],
        how="left",
        suffixes=("", "_engaged"),
    )
    pairs["grade"] = pairs["grade"].where(pairs["ts_engaged"] >= pairs["ts"], 0)
    labels = pairs.groupby(["user_id", "item_id"], as_index=False, sort=True)["grade"].max()
    grade = labels["grade"].astype(int)
    return labels.drop(columns="grade").assign(**{LABEL: grade if graded else grade.clip(upper=1)})


def training_users(labels: pd.DataFrame, limit: int | None, seed: int = 0) -> np.ndarray:
    """The sorted users with a positive label, at most `limit` of them drawn at random (seeded).

    LambdaRank learns from contrasts within each user's list, so a fixed-size sample of users
    trains as well at any scale and keeps training memory flat as the user count grows.
    """
    positive = np.sort(labels.loc[labels[LABEL] > 0, "user_id"].unique())
    if limit is None or len(positive) <= limit:
        return positive
    return np.sort(np.random.default_rng(seed).choice(positive, limit, replace=False))


def training_examples(
    events: pd.DataFrame,
    items: pd.DataFrame,
    subscriptions: pd.DataFrame,
    candidates_fn: CandidatesFn,
    cutoff: datetime,
    label_days: float = 2.0,
    graded: bool = True,
    item_table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Labelled ranking examples: what each user was shown after `cutoff`, featurised at `cutoff`.

    The rows are the items each user was actually shown in the label window, with the candidate
    scores `candidates_fn(cutoff)` gives (NaN where it did not propose the item), so the ranker
    learns on real exposure. Features see only events before `cutoff`; labels see the window.
    Users with no positive label are dropped (nothing to rank towards). Sorted by user: one
    contiguous group per user, as `Reranker.fit` expects. With `item_table` (from
    `catalogue_item_features` at `cutoff`), `events` may hold only the users to learn from.
    """
    labels = impression_labels(events, items, cutoff, label_days, graded)
    labels = labels[labels.groupby("user_id")[LABEL].transform("max") > 0].reset_index(drop=True)
    proposed = candidates_fn(cutoff)
    shown = labels[["user_id", "item_id"]].merge(
        proposed, on=["user_id", "item_id"], how="left", validate="one_to_one"
    )
    examples = ranking_features(shown, events, items, subscriptions, cutoff, item_table)
    examples[LABEL] = labels[LABEL].to_numpy()
    log.info(
        "training examples at %s: %d rows, %d users, %d positive, %.0f%% proposed by candidates",
        utc(cutoff).isoformat(),
        len(examples),
        examples["user_id"].nunique(),
        int((examples[LABEL] > 0).sum()),
        100 * (examples["n_sources"] > 0).mean() if len(examples) else 0.0,
    )
    return examples
