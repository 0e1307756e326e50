"""The closed loop: the demo app shows its users what the platform published, and the platform
learns from what they did with it.

`ClosedLoop.begin` simulates the history (the simulator choosing every list, as before the
platform existed) of a world that goes on for more days. Each `play_day` plays the next day with
feed sessions showing the live table, read through the Redis contract as a frontend reads it
(`TableFeed`), and writes the app's rows as their time comes. What runs between days (the nightly
at midnight, hourly refreshes at the pauses) is the caller's: `inbo play` runs the DAGs through
Airflow.

The simulator's own ground truth, each user's expected clicks on the table's slots and expected
reads anywhere under the response model, goes to `truth_dir/closed_loop/`, never to the platform.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection

from pipelines.app import database as appdb
from pipelines.demo.play import DAY, FeedLists
from pipelines.demo.simulate import Simulation, simulate_world
from pipelines.publish.reader import read_many_user_recs

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

TRUTH_FOLDER = "closed_loop"
PLAY_RECORD = "play.json"
"""How the loop was played (its parameters and wall time), beside the truth it produced."""


@dataclass(frozen=True)
class TableFeed:
    """The live table as the app's frontends read it, for many users at once."""

    client: redis.Redis
    prefix: str

    def lists(self, users: np.ndarray) -> FeedLists:
        answers = read_many_user_recs(self.client, self.prefix, users.tolist())
        lengths = [len(answer["items"]) for answer in answers]
        items = [item for answer in answers for item in answer["items"]]
        return FeedLists(
            offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
            items=np.array([item["item_id"] for item in items], dtype=np.int64),
            sources=np.array([item["source"] for item in items], dtype=object),
            version=np.array([answer["table_version"] for answer in answers], dtype=object),
            variant=np.array([answer["variant"] for answer in answers], dtype=object),
        )


@dataclass(frozen=True)
class DayPlayed:
    day: datetime
    interactions: int
    reading_progress: int
    table_impressions: int


@dataclass
class ClosedLoop:
    """A simulated world played one day at a time against what the platform publishes."""

    db_url: str
    simulation: Simulation
    truth_dir: Path
    next_day: np.datetime64
    last_day: np.datetime64
    played: list[DayPlayed] = field(default_factory=list)

    @classmethod
    def begin(
        cls,
        db_url: str,
        *,
        users: int,
        items: int,
        history_days: int,
        days: int,
        seed: int,
        end: datetime,
        truth_dir: Path,
        dirty_share: float = 0.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> ClosedLoop:
        """Replace the app database with `history_days` up to `end` of a world that goes on
        `days` more days."""
        if days < 1:
            raise ValueError("days must be at least 1")
        simulation = simulate_world(
            db_url,
            users=users,
            items=items,
            days=history_days,
            seed=seed,
            end=end,
            truth_dir=truth_dir,
            dirty_share=dirty_share,
            progress=progress,
            ahead_days=days,
        )
        first = np.datetime64(simulation.summary.end, "us")
        folder = truth_dir / TRUTH_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob("*.parquet"), folder / PLAY_RECORD]:  # an earlier loop's
            stale.unlink(missing_ok=True)
        return cls(db_url, simulation, truth_dir, first, first + days * DAY)

    @property
    def done(self) -> bool:
        return bool(self.next_day >= self.last_day)

    def play_day(
        self,
        feed: TableFeed,
        pauses: Sequence[int] = (),
        on_pause: Callable[[datetime], None] | None = None,
    ) -> DayPlayed:
        """Play the next day; at each hour of `pauses` the app's rows so far are written and
        `on_pause(moment)` runs. The caller runs the nightly once it returns."""
        if self.done:
            raise ValueError("the loop has played every day of its world")
        day, player, rows = self.next_day, self.simulation.player, self.simulation.rows
        engine = appdb.app_engine(self.db_url)
        written_until = [day]

        def catch_up(conn: Connection, moment: np.datetime64) -> int:
            rows.write(conn, written_until[0], moment)
            written_until[0] = moment
            return player.write_progress(conn, moment)

        def pause(moment: datetime) -> None:
            catch_up(conn, np.datetime64(moment.replace(tzinfo=None), "us"))
            if on_pause is not None:
                on_pause(moment)

        try:
            with engine.connect() as conn:
                interactions = player.play_day(conn, day, feed, pauses, pause)
                progress = catch_up(conn, day + DAY)
        finally:
            engine.dispose()
        shown = self._write_truth(day)
        played = DayPlayed(day.astype(datetime), interactions, progress, shown)
        self.played.append(played)
        self.next_day = day + DAY
        log.info("played %s: %d interactions, %d table slots shown", played.day.date(),
                 interactions, shown)  # fmt: skip
        return played

    def _write_truth(self, day: np.datetime64) -> int:
        player = self.simulation.player
        truth = pd.concat(player.truth, ignore_index=True) if player.truth else pd.DataFrame()
        player.truth.clear()
        if truth.empty:
            return 0
        per_user = truth.groupby("user_id", as_index=False).agg(
            variant=("variant", "first"),  # the table's label: other slots carry none
            impressions=("impressions", "sum"),
            expected_clicks=("expected_clicks", "sum"),
            expected_reads=("expected_reads", "sum"),
        )
        per_user.insert(0, "day", pd.Timestamp(day.astype(datetime)))
        path = self.truth_dir / TRUTH_FOLDER / f"{str(day)[:10]}.parquet"
        per_user.to_parquet(path, index=False)
        return int(per_user["impressions"].sum())


def read_truth(truth_dir: Path) -> pd.DataFrame:
    """Every played day's per-user ground truth (day, user_id, variant, impressions,
    expected_clicks, expected_reads)."""
    paths = sorted((truth_dir / TRUTH_FOLDER).glob("*.parquet"))
    if not paths:
        return pd.DataFrame(
            columns=["day", "user_id", "variant", "impressions", "expected_clicks",
                     "expected_reads"]
        )  # fmt: skip
    return pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)


def write_play_record(truth_dir: Path, record: dict[str, object]) -> Path:
    path = truth_dir / TRUTH_FOLDER / PLAY_RECORD
    path.write_text(json.dumps(record, indent=2))
    return path


def read_play_record(truth_dir: Path) -> dict[str, Any] | None:
    """The record `inbo play` left, None for a loop played some other way."""
    path = truth_dir / TRUTH_FOLDER / PLAY_RECORD
    return json.loads(path.read_text()) if path.exists() else None
