"""Playing the demo app one day at a time: sessions, what they show and what users do with it.

Each day's sessions start on the feed, an email or search; each shows 5-20 issues from a mix of
candidate sources, and users open, click, read, bookmark, share or hide them as their taste, the
issue's quality and its position make likely. Rows reach the database in `recorded_at` order, a
few mobile sessions hours late, and a `Flaws` share of them broken the ways real app data breaks.
Reads are kept per (user, issue), as the app's `reading_progress` holds them.

In the closed loop (`pipelines.demo.closed_loop`) feed sessions show the lists the platform
published instead, read through a `Feed`; the response model stays the same, so only a better
ranking earns more clicks and reads.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import Connection

from inbo import app_schema
from inbo.lake import batch_key
from pipelines.app import counters as app_counters
from pipelines.demo.arrays import sample_rows, seconds
from pipelines.demo.audience import DEVICE_SHARE, DEVICES, MOBILE, VARIANTS
from pipelines.demo.bulk_load import insert
from pipelines.demo.world import Following, World

if TYPE_CHECKING:
    from pipelines.demo.incidents import Injector

log = logging.getLogger(__name__)

Columns = dict[str, np.ndarray]

SURFACES: tuple[str, ...] = ("feed", "email", "search")
FEED, EMAIL, SEARCH = range(3)
SOURCES: tuple[str, ...] = ("recent", "popularity", "subscriptions", "explore", "search")
RECENT, POPULAR, SUBSCRIBED, EXPLORE, SEARCHED = range(5)
FEED_SOURCE_MIX = (0.35, 0.25, 0.25, 0.15, 0.0)

HOURLY = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.5, 3, 3.5, 2.5, 2, 2, 2.5, 2, 1.8, 1.8, 2, 2.5, 3, 3.5, 3.5, 3,
     2.2, 1.5]
)  # fmt: skip
HOURLY = HOURLY / HOURLY.sum()
"""When in the day sessions start: a morning and an evening peak."""

EMAIL_SHARE, SEARCH_SHARE = 0.25, 0.1  # of sessions (email only for users who subscribe)
PRIMARY_DEVICE_SHARE = 0.85  # of sessions on the user's own device
POPULARITY_HALF_LIFE_DAYS = 3.0
CLICK_MEMORY = 0.6  # share of yesterday's click counts that still drives today's popularity
PUBLISH_HOUR = np.timedelta64(2, "h")  # the nightly table version goes live at 02:00 UTC
CLICK_BASE = np.array([0.30, 0.45, 0.50])  # by surface; on email, given the email was opened
POSITION_DECAY = 0.8
LATE_SESSION_SHARE = 0.016  # of mobile sessions uploaded 1-30 h late: about 1% of rows
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
DAY = np.timedelta64(1, "D")


def play(
    conn: Connection,
    player: Player,
    start: datetime,
    days: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """Simulate and insert `days` days from `start`, the simulator choosing every list; returns
    (interactions, reading_progress) rows written."""
    start64 = np.datetime64(start, "us")
    written = 0
    for day in range(days):
        written += player.play_day(conn, start64 + day * DAY)
        if progress is not None:
            progress(day + 1, days)
    return written, player.write_progress(conn, start64 + days * DAY)


class Feed(Protocol):
    """Where feed sessions get their lists from when the app shows what the platform published."""

    def lists(self, users: np.ndarray) -> FeedLists: ...


@dataclass(frozen=True)
class FeedLists:
    """Each asked user's list in rank order: items `offsets[i]:offsets[i+1]` are user i's, with
    their source; per user the table version and the variant label (None outside experiments)."""

    offsets: np.ndarray
    items: np.ndarray  # issue ids
    sources: np.ndarray
    version: np.ndarray
    variant: np.ndarray


@dataclass
class Player:
    """The app played forward a day at a time, and what carries from one day to the next: rows
    recorded late, yesterday's clicks, every read so far.

    The `injector`'s incidents act on each day's rows after the flaws, so neither changes the
    random draws of the other or of the world. With a `feed`, feed sessions show the published
    lists and the chance of each response is kept as ground truth (`truth`)."""

    rng: np.random.Generator
    world: World
    flaws: Flaws
    app: app_counters.SimulatedApp | None
    injector: Injector
    pending: Columns
    clicks: np.ndarray
    reads: list[Columns] = field(default_factory=list)
    truth: list[pd.DataFrame] = field(default_factory=list)
    counted_reads: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def begin(
        cls,
        rng: np.random.Generator,
        world: World,
        window: tuple[datetime, datetime],
        flaws: Flaws,
        app: app_counters.SimulatedApp | None,
        injector: Injector,
    ) -> Player:
        """A player for the window [start, end): its subscription changes are queued up front."""
        start, end = (np.datetime64(moment, "us") for moment in window)
        pending = _subscription_events(rng, world, start, end)
        return cls(rng, world, flaws, app, injector, pending, np.zeros(len(world.published)))

    def play_day(
        self,
        conn: Connection,
        day_start: np.datetime64,
        feed: Feed | None = None,
        pauses: Sequence[int] = (),
        on_pause: Callable[[datetime], None] | None = None,
    ) -> int:
        """Play one day and write what the server recorded by its end; returns rows written.

        At each hour of `pauses` the rows recorded so far are written and `on_pause(moment)`
        runs (an hourly refresh), so the hours after it see its table."""
        world, rng = self.world, self.rng
        following = Following.at(world, day_start)
        popularity = _popularity(world, day_start, self.clicks)
        sessions = _sessions(rng, world, following, day_start)
        day_end = day_start + DAY
        bounds = [day_start + np.timedelta64(h, "h") for h in sorted(set(pauses)) if 0 < h < 24]
        written, clicked = 0, []
        for lo, hi in itertools.pairwise([day_start, *bounds, day_end]):
            times = sessions["time"]
            part = _take(sessions, np.flatnonzero((times >= lo) & (times < hi)))
            events, reads = self._respond(part, following, popularity, feed)
            clicked.append(events["issue_id"][events["kind"] == "click"] - 1)
            written += self._write_due(conn, events, lo, hi)
            self.reads.append(self.injector.reads(reads))
            if hi < day_end and on_pause is not None:
                on_pause(_aware(hi))
        counts = np.bincount(np.concatenate(clicked), minlength=len(self.clicks))
        self.clicks = CLICK_MEMORY * self.clicks + counts
        log.debug("day %s: %d interactions written", str(day_start)[:10], written)
        return written

    def write_progress(self, conn: Connection, until: np.datetime64) -> int:
        """Replace `reading_progress` with each (user, issue)'s furthest read stored before
        `until`, as the app's upserts leave it; returns its rows."""
        latest = _latest_progress(self.reads, until)
        conn.execute(app_schema.reading_progress.delete())
        insert(conn, app_schema.reading_progress, latest)
        conn.commit()
        keys = latest["user_id"].to_numpy() * (len(self.world.published) + 1) + latest["issue_id"]
        if self.app is not None:  # the app counts a read once, when its progress first arrives
            new = ~np.isin(keys, self.counted_reads)
            self.app.record(app_counters.read_counts(latest["issue_id"].to_numpy()[new]))
        self.counted_reads = keys.to_numpy()
        return len(latest)

    def _respond(
        self, sessions: Columns, following: Following, popularity: np.ndarray, feed: Feed | None
    ) -> tuple[Columns, Columns]:
        """The sessions' slots and what users do with them: (interaction rows, reads)."""
        rng, world = self.rng, self.world
        sizes = rng.integers(5, 21, len(sessions["user"]))
        on_table = np.zeros(len(sizes), dtype=bool) if feed is None else sessions["surface"] == FEED
        shown = _impressions(rng, world, following, sessions, popularity, sizes * ~on_table)
        if feed is not None:
            table = _table_slots(rng, sessions, np.flatnonzero(on_table), sizes, feed)
            order = np.argsort(np.concatenate([shown["session"], table["session"]]), kind="stable")
            shown = _take(_concat([shown, table]), order)
        events, reads, chances = _responses(rng, world, following, sessions, shown)
        if feed is not None:
            self.truth.append(_expected(shown, chances))
        return events, reads

    def _write_due(
        self, conn: Connection, events: Columns, lo: np.datetime64, hi: np.datetime64
    ) -> int:
        """Write the queued rows the server recorded in [lo, hi), keep the rest queued."""
        due, self.pending = _split_due(_concat([self.pending, events]), hi)
        rows = self.injector.apply(self.flaws.apply(due), lo, hi)
        written = insert(conn, app_schema.experience_interactions, rows)
        conn.commit()
        if self.app is not None:
            self.app.record(app_counters.interaction_counts(rows["issue_id"], rows["kind"]))
        return written


def _table_slots(
    rng: np.random.Generator, sessions: Columns, on_table: np.ndarray, sizes: np.ndarray, feed: Feed
) -> Columns:
    """Feed slots read from the published table: the first `size` items of the session user's
    list, in rank order, with the `rec_context` the app logs (table version, source, variant)."""
    users, inverse = np.unique(sessions["user"][on_table], return_inverse=True)
    lists = feed.lists(users + 1)
    length = np.diff(lists.offsets)[inverse]
    shown = np.minimum(sizes[on_table], length)
    session = np.repeat(on_table, shown)
    position = np.arange(len(session)) - np.repeat(np.cumsum(shown) - shown, shown)
    owner = np.repeat(inverse, shown)
    at = lists.offsets[owner] + position
    context = _contexts(lists.version[owner], lists.sources[at], lists.variant[owner])
    jitter = position * 1.2 + rng.random(len(session))
    return {
        "session": session,
        "user": sessions["user"][session],
        "issue": lists.items[at].astype(np.int64) - 1,
        "source": np.full(len(session), -1),
        "position": position,
        "time": sessions["time"][session] + seconds(jitter),
        "surface": sessions["surface"][session],
        "context": context,
        "from_table": np.ones(len(session), dtype=bool),
        "variant": lists.variant[owner],
    }


def _contexts(version: np.ndarray, source: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """The JSON `rec_context` per slot, each distinct one encoded once."""
    columns = {"table_version": version, "source": source, "variant": variant}
    factored = {key: pd.factorize(values, use_na_sentinel=False) for key, values in columns.items()}
    codes = np.stack([code for code, _ in factored.values()], axis=1)
    unique, inverse = np.unique(codes, axis=0, return_inverse=True)
    texts = [
        json.dumps(
            {
                key: None if pd.isna(values[code]) else str(values[code])
                for (key, (_, values)), code in zip(factored.items(), row, strict=True)
            }
        )
        for row in unique.tolist()
    ]
    return np.array(texts, dtype=object)[inverse.ravel()]


def _expected(shown: Columns, chances: Columns) -> pd.DataFrame:
    """Per slot: whether the table filled it (with its variant), the expected click on it if so
    and the expected read anywhere (the chances of the response model): the ground truth an
    analysis is checked against."""
    from_table = shown["from_table"]
    return pd.DataFrame(
        {
            "user_id": shown["user"] + 1,
            "variant": shown["variant"],
            "impressions": from_table.astype(np.int64),
            "expected_clicks": np.where(from_table, chances["click"], 0.0),
            "expected_reads": chances["read"],
        }
    )


@dataclass(frozen=True)
class Flaws:
    """Breaks a share of interaction rows, one flaw per row, cycling through `KINDS`."""

    rng: np.random.Generator
    share: float
    KINDS = ("unknown kind", "negative dwell", "unknown issue", "future clock")

    def apply(self, rows: Columns) -> Columns:
        count = self.rng.binomial(len(rows["kind"]), self.share) if self.share else 0
        if count == 0:
            return rows
        picked = self.rng.choice(len(rows["kind"]), size=count, replace=False)
        flaw = np.arange(count) % len(self.KINDS)
        out = {name: np.array(values, copy=True) for name, values in rows.items()}
        out["kind"][picked[flaw == 0]] = "swipe"
        out["dwell_ms"] = out["dwell_ms"].astype(float)
        out["dwell_ms"][picked[flaw == 1]] = -1500.0
        out["issue_id"][picked[flaw == 2]] = 9_000_000
        out["occurred_at"][picked[flaw == 3]] = np.datetime64("2099-01-01T00:00:00", "us")
        return out


def _popularity(world: World, day_start: np.datetime64, clicks: np.ndarray) -> np.ndarray:
    """Editorial pull of each issue today: quality, freshness and yesterday's clicks."""
    age: np.ndarray = day_start - world.published
    age_days = np.maximum(age / DAY, 0.0)
    return world.quality * 0.5 ** (age_days / POPULARITY_HALF_LIFE_DAYS) * (1 + clicks)


def _sessions(
    rng: np.random.Generator, world: World, following: Following, day_start: np.datetime64
) -> Columns:
    """Poisson(sessions_per_day) sessions per signed-up, not yet churned user."""
    active = (world.signup < day_start + DAY) & (world.churn > day_start)
    counts = rng.poisson(np.where(active, world.sessions_per_day, 0.0))
    user = np.repeat(np.arange(len(counts)), counts)
    hour = rng.choice(24, len(user), p=HOURLY)
    time = day_start + seconds((hour + rng.random(len(user))) * 3600)
    keep = (time >= world.signup[user]) & (time < world.churn[user])
    user, time = user[keep], time[keep]
    n = len(user)
    device = np.where(
        rng.random(n) < PRIMARY_DEVICE_SHARE, world.device[user], rng.choice(3, n, p=DEVICE_SHARE)
    )
    draw = rng.random(n)
    surface = np.where(draw < SEARCH_SHARE, SEARCH, FEED)
    surface[
        (draw >= SEARCH_SHARE) & (draw < SEARCH_SHARE + EMAIL_SHARE) & (following.count[user] > 0)
    ] = EMAIL
    return {
        "user": user,
        "time": time,
        "device": device,
        "surface": surface,
        "lag": _upload_lag(rng, device),
        "session_id": hex_ids(rng, n),
    }


def _upload_lag(rng: np.random.Generator, device: np.ndarray) -> np.ndarray:
    """Seconds by which a session reaches the server late: 1-30 h for a few offline phones."""
    late = MOBILE[device] & (rng.random(len(device)) < LATE_SESSION_SHARE)
    return np.where(late, rng.uniform(3600, 30 * 3600, len(device)), 0.0)


def _impressions(
    rng: np.random.Generator,
    world: World,
    following: Following,
    sessions: Columns,
    popularity: np.ndarray,
    sizes: np.ndarray,
) -> Columns:
    """`sizes` issues shown per session from a candidate mix, deduplicated, positions 0..k."""
    session = np.repeat(np.arange(len(sizes)), sizes)
    user, time = sessions["user"][session], sessions["time"][session]
    source = _sources(rng, sessions["surface"][session], following.count[user] > 0)
    issue = np.full(len(session), -1)
    picks: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        RECENT: lambda rows: world.pick_recent(rng, time[rows]),
        POPULAR: lambda rows: world.pick_popular(rng, time[rows], popularity),
        SUBSCRIBED: lambda rows: world.pick_from_publishers(
            rng, following.sample(rng, user[rows]), time[rows]
        ),
        SEARCHED: lambda rows: world.pick_in_categories(
            rng, sample_rows(rng, world.cumulative_taste[user[rows]]), time[rows]
        ),
    }
    for code, pick in picks.items():
        rows = source == code
        issue[rows] = pick(rows)
    missing = issue < 0
    source[missing] = EXPLORE
    issue[missing] = world.pick_any(rng, time[missing])
    keep = _first_in_session(session, issue, len(world.published)) & (issue >= 0)
    session, issue, source = session[keep], issue[keep], source[keep]
    position = np.arange(len(session)) - np.searchsorted(session, session)
    jitter = position * 1.2 + rng.random(len(session))
    user, time, surface = (
        sessions["user"][session],
        sessions["time"][session] + seconds(jitter),
        sessions["surface"][session],
    )
    return {
        "session": session,
        "user": user,
        "issue": issue,
        "source": source,
        "position": position,
        "time": time,
        "surface": surface,
        "context": rec_context(time, source, world.variant[user], surface == FEED),
        "from_table": np.zeros(len(session), dtype=bool),
        "variant": np.full(len(session), None, dtype=object),
    }


def _sources(rng: np.random.Generator, surface: np.ndarray, follows: np.ndarray) -> np.ndarray:
    """Where each slot's candidate comes from: a mix on the feed, followed publishers by email."""
    source = rng.choice(len(SOURCES), len(surface), p=FEED_SOURCE_MIX)
    source[(source == SUBSCRIBED) & ~follows] = RECENT
    source[surface == EMAIL] = SUBSCRIBED
    source[surface == SEARCH] = SEARCHED
    return source


def _first_in_session(session: np.ndarray, issue: np.ndarray, n_issues: int) -> np.ndarray:
    """Mask keeping the first slot of each (session, issue): an issue is shown once a session."""
    _, first = np.unique(session * (n_issues + 1) + issue + 1, return_index=True)
    keep = np.zeros(len(session), dtype=bool)
    keep[first] = True
    return keep


def _responses(
    rng: np.random.Generator,
    world: World,
    following: Following,
    sessions: Columns,
    shown: Columns,
) -> tuple[Columns, Columns, Columns]:
    """What users do with what they were shown: interaction rows, reads, and each slot's chance
    of a click and of a read (opening the email first, where it is one)."""
    user, issue, surface = shown["user"], shown["issue"], shown["surface"]
    n = len(issue)
    taste = world.relative_taste[user, world.category[issue]]
    readable = (world.language[issue] == 0) | (world.language[issue] == world.user_language[user])
    appeal = (
        (0.03 + 0.97 * taste**1.5)
        * (0.6 + 0.8 * world.quality[issue])
        * np.where(following.follows(user, world.publisher[issue]), 1.5, 1.0)
        * np.where(readable, 1.0, 0.2)
    )
    email = surface == EMAIL
    p_open = np.where(email, np.minimum(0.15 + 0.6 * appeal, 0.95), 1.0)
    opened = email & (rng.random(n) < p_open)
    bias = (1.0 + shown["position"]) ** -POSITION_DECAY
    p_click = np.minimum(CLICK_BASE[surface] * appeal * bias, 0.9)
    clicked = (rng.random(n) < p_click) & (opened | ~email)
    p_read = 0.55 + 0.4 * taste
    read = clicked & (rng.random(n) < p_read)
    fraction, spent = _reading(rng, taste, world.read_seconds[issue])
    dwell = np.where(read, spent, 1.0 + rng.exponential(8.0, n))
    time = shown["time"]
    open_time = time + seconds(1 + 30 * rng.random(n))
    click_time = np.where(email, open_time, time) + seconds(0.5 + rng.exponential(6.0, n))
    saved = clicked & (rng.random(n) < 0.03 + 0.12 * taste)
    shared = clicked & (rng.random(n) < (0.01 + 0.04 * taste) * (0.5 + world.quality[issue]))
    hidden = ~clicked & (surface == FEED) & (rng.random(n) < 0.02 * (1.0 - taste) ** 3)
    context = shown["context"]
    parts = [
        _rows("impression", None, time, shown, context=context, position=True),
        _rows("email_open", opened, open_time, shown, position=True),
        _rows("click", clicked, click_time, shown, context=context, position=True, dwell=dwell),
        _rows("bookmark", saved, click_time + seconds(dwell * rng.random(n)), shown),
        _rows("share", shared, click_time + seconds(dwell), shown),
        _rows("hide", hidden, time + seconds(0.5 + 5 * rng.random(n)), shown, position=True),
    ]
    events = _session_fields(rng, world, sessions, _concat(parts))
    started = click_time + seconds(0.5)
    # The server stamps updated_at when the progress arrives: late for offline sessions too.
    lag = sessions["lag"][shown["session"]]
    stored = started + seconds(spent * rng.uniform(1.0, 1.3, n) + lag)
    reads = {
        "user_id": user[read] + 1,
        "issue_id": issue[read] + 1,
        "progress": fraction[read],
        "seconds_read": spent[read],
        "started_at": started[read],
        "updated_at": stored[read],
        "session_id": sessions["session_id"][shown["session"][read]],
        "device": np.array(DEVICES, dtype=object)[sessions["device"][shown["session"][read]]],
    }
    chances = {"click": p_open * p_click, "read": p_open * p_click * p_read}
    return events, reads, chances


def _reading(
    rng: np.random.Generator, taste: np.ndarray, full_seconds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Share of the issue read and seconds spent: some full reads, many partial, taste helps."""
    n = len(taste)
    partial = rng.beta(1.0 + 1.5 * taste, 2.0)
    fraction = np.clip(np.where(rng.random(n) < 0.05 + 0.35 * taste, 1.0, partial), 0.01, 1.0)
    return fraction, fraction * full_seconds * rng.lognormal(0.0, 0.25, n)


def _rows(
    kind: str,
    mask: np.ndarray | None,
    when: np.ndarray,
    shown: Columns,
    *,
    context: np.ndarray | None = None,
    position: bool = False,
    dwell: np.ndarray | None = None,
) -> Columns:
    """Interaction rows of one kind for the shown slots in `mask` (all when None)."""
    rows = np.arange(len(when)) if mask is None else np.flatnonzero(mask)
    nothing = np.full(len(rows), np.nan)
    return {
        "session": shown["session"][rows],
        "user_id": shown["user"][rows] + 1,
        "issue_id": shown["issue"][rows] + 1,
        "kind": np.full(len(rows), kind, dtype=object),
        "occurred_at": when[rows],
        "dwell_ms": nothing if dwell is None else np.round(dwell[rows] * 1000),
        "position": shown["position"][rows].astype(float) if position else nothing,
        "rec_context": np.full(len(rows), None, dtype=object) if context is None else context[rows],
    }


def _session_fields(
    rng: np.random.Generator, world: World, sessions: Columns, events: Columns
) -> Columns:
    """Complete rows with what their session knows: id, surface, device, country, upload lag."""
    session = events.pop("session")
    delay = sessions["lag"][session] + 0.05 + rng.exponential(0.4, len(session))
    events["recorded_at"] = events["occurred_at"] + seconds(delay)
    events["session_id"] = sessions["session_id"][session]
    events["surface"] = np.array(SURFACES, dtype=object)[sessions["surface"][session]]
    events["device"] = np.array(DEVICES, dtype=object)[sessions["device"][session]]
    events["country"] = world.country[events["user_id"] - 1]
    return events


def rec_context(
    time: np.ndarray, source: np.ndarray, variant: np.ndarray, on_feed: np.ndarray
) -> np.ndarray:
    """JSON `rec_context` of the simulator's own feed slots (before the closed loop): the table
    version live at the time, the candidate source, the user's A/B variant."""
    days, day = np.unique((time - PUBLISH_HOUR).astype("datetime64[D]"), return_inverse=True)
    versions = [batch_key((d + PUBLISH_HOUR).astype("datetime64[us]").item()) for d in days]
    context = _contexts(
        np.array(versions, dtype=object)[day.ravel()],
        np.array(SOURCES, dtype=object)[source],
        np.array(VARIANTS, dtype=object)[variant],
    )
    context[~on_feed] = None
    return context


def _subscription_events(
    rng: np.random.Generator, world: World, start: np.datetime64, end: np.datetime64
) -> Columns:
    """Rows for subscription changes inside the window, on the publisher's latest issue."""
    parts = []
    for kind, times, surface in (
        ("subscribe", world.subscribed, "reader"),
        ("unsubscribe", world.unsubscribed, "email"),
    ):
        rows = np.flatnonzero((times >= start) & (times < end))
        when, user = times[rows], world.follower[rows]
        n = len(rows)
        device = world.device[user]
        lag = _upload_lag(rng, device)
        parts.append(
            {
                "user_id": user + 1,
                "issue_id": world.latest_issue(world.followed[rows], when) + 1,
                "kind": np.full(n, kind, dtype=object),
                "occurred_at": when,
                "dwell_ms": np.full(n, np.nan),
                "position": np.full(n, np.nan),
                "rec_context": np.full(n, None, dtype=object),
                "recorded_at": when + seconds(lag + 0.05 + rng.exponential(0.4, n)),
                "session_id": hex_ids(rng, n),
                "surface": np.full(n, surface, dtype=object),
                "device": np.array(DEVICES, dtype=object)[device],
                "country": world.country[user],
            }
        )
    return _concat(parts)


def _latest_progress(reads: list[Columns], end: np.datetime64) -> pd.DataFrame:
    """One row per (user, issue): the furthest progress, total time, first start, last update."""
    frame = pd.DataFrame(_concat(reads))
    frame = frame[frame["updated_at"] < end].sort_values("updated_at", kind="stable")
    return frame.groupby(["user_id", "issue_id"], as_index=False, sort=True).agg(
        progress=("progress", "max"),
        seconds_read=("seconds_read", "sum"),
        started_at=("started_at", "min"),
        updated_at=("updated_at", "max"),
        session_id=("session_id", "last"),
        device=("device", "last"),
    )


def hex_ids(rng: np.random.Generator, count: int, width: int = 16) -> np.ndarray:
    """Random hex ids, built without a Python loop: digits as code points viewed as strings."""
    digits = HEX[rng.integers(0, 16, (count, width))].astype(np.uint32)
    return digits.view(f"<U{width}").ravel()


def _aware(moment: np.datetime64) -> datetime:
    return moment.astype("datetime64[us]").item().replace(tzinfo=UTC)


def _concat(parts: list[Columns]) -> Columns:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _take(columns: Columns, rows: np.ndarray) -> Columns:
    return {name: values[rows] for name, values in columns.items()}


def _split_due(events: Columns, moment: np.datetime64) -> tuple[Columns, Columns]:
    """Rows the server recorded before `moment`, in recorded order, and those still in flight."""
    recorded = events["recorded_at"]
    due = np.flatnonzero(recorded < moment)
    due = due[np.argsort(recorded[due], kind="stable")]
    return _take(events, due), _take(events, np.flatnonzero(recorded >= moment))
