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

from inbo import app_schema
from pipelines.app import counters as app_counters
from pipelines.app import database as appdb
from pipelines.demo import audience, catalogue
from pipelines.demo.audience import VARIANTS
from pipelines.demo.bulk_load import insert, tune_for_bulk_load
from pipelines.demo.catalogue import CATEGORIES
from pipelines.demo.incidents import Incident, Injector, bot_rows
from pipelines.demo.play import Flaws, play
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
    if min(users, items, days) < 1:
        raise ValueError("users, items and days must all be at least 1")
    if not 0.0 <= dirty_share < 1.0:
        raise ValueError("dirty_share must be in [0, 1)")
    if not 0.0 <= counter_drift < 1.0:
        raise ValueError("counter_drift must be in [0, 1)")
    if activity <= 0:
        raise ValueError("activity must be positive")
    end = _naive_utc(end)
    start = end - timedelta(days=days)
    rng = np.random.default_rng(seed)
    pubs = catalogue.publishers(rng, min(items, max(5, round(items / 15))), start)
    issues = catalogue.issues(rng, items, pubs, start, end)
    people, tastes = audience.users(rng, users, start, end)
    people["sessions_per_day"] *= activity
    subs = audience.subscriptions(rng, people, tastes, pubs, start, end)
    _write_truth(truth_dir, people, tastes, issues)
    end64 = np.datetime64(end, "us")
    injector = Injector.build(incidents, np.random.default_rng([seed, 3]), issues, end64)
    published = injector.published(issues)

    engine = appdb.app_engine(db_url)
    try:
        app_schema.metadata.drop_all(engine)
        appdb.create_app_schema(engine)
        with engine.connect() as conn:
            tune_for_bulk_load(conn)
            insert(conn, app_schema.users, people)
            insert(conn, app_schema.publishers, pubs)
            insert(conn, app_schema.newsletter_issues, published)
            insert(conn, app_schema.subscriptions, subs)
            conn.commit()
            world = World.build(people, tastes, issues, subs, len(pubs), end)
            injector = injector.with_bots(bot_rows(injector.rng, world, incidents, end64))
            flaws = Flaws(np.random.default_rng([seed, 1]), dirty_share)
            app = (
                app_counters.SimulatedApp.replacing(
                    counters, np.random.default_rng([seed, 2]), counter_drift
                )
                if counters is not None
                else None
            )
            events, reads = play(conn, rng, world, start, days, progress, flaws, app, injector)
    finally:
        engine.dispose()
    if app is not None:
        app.write_truth(truth_dir)
    summary = SimulationSummary(
        start, end, len(people), len(pubs), len(published), len(subs), events, reads
    )
    log.debug("simulated %s", summary)
    return summary


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
