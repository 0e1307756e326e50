"""A seeded simulation of the INBO app: the demo world every pipeline runs on.

`simulate` replaces the app database with publishers and their newsletter issues
(`pipelines.demo.catalogue`), users with latent tastes and their subscriptions
(`pipelines.demo.audience`), then plays the app one day at a time (`pipelines.demo.play`):
sessions on the feed, email and search surfaces with impressions, email opens, clicks, reads
(kept in `reading_progress`), bookmarks, shares and hides. The latent truth (tastes, item
quality, churn) goes to Parquet so tests can check that the models find it.

Each day is generated with numpy and inserted in bulk, so memory is bounded by one day of events.
Interactions reach the database in `recorded_at` order, as the app's own writes would, and
nothing recorded at or after `end` exists yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Connection, bindparam, update

from inbo import app_schema
from pipelines.app import counters as app_counters
from pipelines.app import database as appdb
from pipelines.app.sources import SNAPSHOT_TABLES
from pipelines.demo import audience, catalogue
from pipelines.demo.audience import VARIANTS
from pipelines.demo.bulk_load import insert, tune_for_bulk_load
from pipelines.demo.catalogue import CATEGORIES
from pipelines.demo.incidents import Incident, Injector, bot_rows
from pipelines.demo.play import Flaws, Player, play
from pipelines.demo.world import World

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationSummary:
    """Rows written per table and the simulated window [start, end), naive UTC."""

    start: datetime
    end: datetime
    users: int
    publishers: int
    newsletter_issues: int
    subscriptions: int
    experience_interactions: int
    reading_progress: int


def simulate(
    db_url: str,
    *,
    users: int,
    items: int,
    days: int,
    seed: int,
    end: datetime,
    truth_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    dirty_share: float = 0.0,
    counters: app_counters.CounterStore | None = None,
    counter_drift: float = 0.0,
    activity: float = 1.0,
    incidents: Sequence[Incident] = (),
) -> SimulationSummary:
    """Replace the app database at `db_url` with a simulated world of `days` days up to `end`.

    `dirty_share` of the interactions are broken the ways real app data breaks (an unknown kind, a
    negative dwell, an issue that does not exist, a clock in the future), from a random stream of
    their own, so the same seed gives the same clean rows whatever the share.

    With `counters`, the app's per-item counters are rebuilt in Redis as the rows are written, a
    `counter_drift` share of the increments lost or doubled (again from a stream of their own);
    the drift is recorded in `truth_dir/item_counter_drift.parquet`.

    `activity` scales every user's sessions per day: 1.0 is the demo's engaged audience (about 7
    interactions per user and day); a large audience that opens the app only now and then is
    nearer 0.085 (about 18M interactions for 1M users over 30 days).

    `incidents` (`pipelines.demo.incidents`) break the app for a while: a click-tracking outage,
    a bot burst, a broken publisher feed; the rows outside their windows stay those of the clean
    run with the same seed.
    """
    return simulate_world(
        db_url,
        users=users,
        items=items,
        days=days,
        seed=seed,
        end=end,
        truth_dir=truth_dir,
        progress=progress,
        dirty_share=dirty_share,
        counters=counters,
        counter_drift=counter_drift,
        activity=activity,
        incidents=incidents,
    ).summary


@dataclass(frozen=True)
class Simulation:
    """A simulated world played up to `summary.end`, ready to be played on: the player with what
    carries over, and the app's rows that come to exist later (`ahead_days` of them)."""

    summary: SimulationSummary
    player: Player
    rows: AppRows


def simulate_world(
    db_url: str,
    *,
    users: int,
    items: int,
    days: int,
    seed: int,
    end: datetime,
    truth_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    dirty_share: float = 0.0,
    counters: app_counters.CounterStore | None = None,
    counter_drift: float = 0.0,
    activity: float = 1.0,
    incidents: Sequence[Incident] = (),
    ahead_days: int = 0,
) -> Simulation:
    """`simulate`, for a world that goes on `ahead_days` past `end`: its users, issues and
    subscriptions of those days exist in the simulation but reach the database only as the
    closed loop plays them (`AppRows.write`)."""
    if min(users, items, days) < 1:
        raise ValueError("users, items and days must all be at least 1")
    if not 0.0 <= dirty_share < 1.0:
        raise ValueError("dirty_share must be in [0, 1)")
    if not 0.0 <= counter_drift < 1.0:
        raise ValueError("counter_drift must be in [0, 1)")
    if activity <= 0:
        raise ValueError("activity must be positive")
    if ahead_days < 0:
        raise ValueError("ahead_days must not be negative")
    end = _naive_utc(end)
    start = end - timedelta(days=days)
    world_end = end + timedelta(days=ahead_days)
    rng = np.random.default_rng(seed)
    pubs = catalogue.publishers(rng, min(items, max(5, round(items / 15))), start)
    issues = catalogue.issues(rng, items, pubs, start, world_end)
    people, tastes = audience.users(rng, users, start, world_end)
    people["sessions_per_day"] *= activity
    subs = audience.subscriptions(rng, people, tastes, pubs, start, world_end)
    _write_truth(truth_dir, people, tastes, issues)
    end64 = np.datetime64(end, "us")
    injector = Injector.build(incidents, np.random.default_rng([seed, 3]), issues, end64)
    rows = AppRows(people, pubs, injector.published(issues), subs)

    engine = appdb.app_engine(db_url)
    try:
        app_schema.metadata.drop_all(engine)
        appdb.create_app_schema(engine)
        with engine.connect() as conn:
            tune_for_bulk_load(conn)
            rows.write(conn, None, end64)
            world = World.build(people, tastes, issues, subs, len(pubs), world_end)
            injector = injector.with_bots(bot_rows(injector.rng, world, incidents, end64))
            flaws = Flaws(np.random.default_rng([seed, 1]), dirty_share)
            app = (
                app_counters.SimulatedApp.replacing(
                    counters, np.random.default_rng([seed, 2]), counter_drift
                )
                if counters is not None
                else None
            )
            player = Player.begin(rng, world, (start, world_end), flaws, app, injector)
            events, reads = play(conn, player, start, days, progress)
    finally:
        engine.dispose()
    if app is not None:
        app.write_truth(truth_dir)
    summary = SimulationSummary(
        start, end, rows.count(end64, "users"), len(pubs), rows.count(end64, "newsletter_issues"),
        rows.count(end64, "subscriptions"), events, reads,
    )  # fmt: skip
    log.debug("simulated %s", summary)
    return Simulation(summary, player, rows)


BORN = {**SNAPSHOT_TABLES, "newsletter_issues": "published_at"}
"""When each dimension row reaches the app database: when it came to exist, an issue once it is
published (the simulated catalogue holds no drafts)."""
CHANGES = {"users": ("updated_at", "created_at"), "subscriptions": ("unsubscribed_at", None)}
"""Per table, the column a later change sets, and what it holds until then (None: null)."""


@dataclass(frozen=True)
class AppRows:
    """The app's dimension rows, each written once the moment it came to exist has passed, as
    the app knew it then: a later profile edit or unsubscription is not known before it happens."""

    users: pd.DataFrame
    publishers: pd.DataFrame
    newsletter_issues: pd.DataFrame
    subscriptions: pd.DataFrame

    def write(self, conn: Connection, since: np.datetime64 | None, until: np.datetime64) -> None:
        """Insert the rows that came to exist in [since, until) and apply that time's changes
        to the rows written before it."""
        for name in BORN:
            frame = self._born(name, since, until)
            if name in CHANGES:  # as the row stands before its change
                changed, before = CHANGES[name]
                unchanged = None if before is None else frame[before]
                frame = frame.assign(
                    **{changed: frame[changed].where(frame[changed] < until, unchanged)}
                )
            insert(conn, app_schema.metadata.tables[name], frame)
        if since is not None:
            self._update(conn, since, until)
        conn.commit()

    def count(self, until: np.datetime64, name: str) -> int:
        return len(self._born(name, None, until))

    def _born(self, name: str, since: np.datetime64 | None, until: np.datetime64) -> pd.DataFrame:
        frame: pd.DataFrame = getattr(self, name)
        born = frame[BORN[name]]
        return frame[(born < until) & (True if since is None else born >= since)]

    def _update(self, conn: Connection, since: np.datetime64, until: np.datetime64) -> None:
        """What changed in [since, until) on rows written before it: unsubscriptions and
        profile edits, as the app's UPDATEs."""
        for name, (changed, _) in CHANGES.items():
            frame: pd.DataFrame = getattr(self, name)
            born = BORN[name]
            table = app_schema.metadata.tables[name]
            rows = frame[
                (frame[born] < since) & (frame[changed] >= since) & (frame[changed] < until)
            ]
            statement = (
                update(table)
                .where(table.c.id == bindparam("row_id"))
                .values({changed: bindparam("changed_at")})
            )
            values = [
                {"row_id": int(row_id), "changed_at": moment.to_pydatetime()}
                for row_id, moment in zip(rows["id"], rows[changed], strict=True)
            ]
            if values:
                conn.execute(statement, values)


def _write_truth(
    truth_dir: Path, people: pd.DataFrame, tastes: np.ndarray, issues: pd.DataFrame
) -> None:
    """The latent world as Parquet: what a good recommender should rediscover."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    n_users, n_categories = tastes.shape
    pd.DataFrame(
        {
            "user_id": np.repeat(people["id"].to_numpy(), n_categories),
            "category": np.tile(np.array(CATEGORIES, dtype=object), n_users),
            "weight": tastes.ravel(),
        }
    ).to_parquet(truth_dir / "user_tastes.parquet", index=False)
    issues[["id", "category", "quality"]].rename(columns={"id": "item_id"}).to_parquet(
        truth_dir / "items.parquet", index=False
    )
    pd.DataFrame(
        {
            "user_id": people["id"],
            "sessions_per_day": people["sessions_per_day"],
            "churned_at": people["churn"].where(people["churned"]),
            "variant": np.array(VARIANTS, dtype=object)[people["variant"]],
        }
    ).to_parquet(truth_dir / "users.parquet", index=False)


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
