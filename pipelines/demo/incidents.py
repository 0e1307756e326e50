"""Incidents the simulator can inject, so anomaly detection has something real to find.

- `click-outage`: the click tracker fails; `CLICK_LOSS` of the click rows recorded in the window
  are never written. Only clicks: reads, bookmarks and shares reach the app through their own
  endpoints and are still recorded, so the click-through rate drops, not the rest.
- `bot-burst`: one user's client loops, writing `BOT_IMPRESSIONS` feed impressions spread over
  the window (default 5 minutes) and nothing else.
- `broken-feed`: the publishers' feed stops: issues due in the window (default: until the end)
  are never published, and the slots, reads and subscription rows that would have shown them
  are not written.

Incidents draw from a random stream of their own and act on rows after they are generated, so
with the same seed everything outside an incident's window (for `broken-feed`: before its start)
is exactly the clean run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import numpy as np
import pandas as pd

from pipelines.demo import play
from pipelines.demo.arrays import seconds
from pipelines.demo.audience import DEVICES
from pipelines.demo.world import World

Columns = dict[str, np.ndarray]

CLICK_LOSS = 0.8
BOT_IMPRESSIONS = 3000
BOT_UPLOAD_SECONDS = 2.0
SPEC = re.compile(
    r"^(?P<kind>[a-z-]+)@(?P<start>\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(?:\+(?P<n>\d+)(?P<unit>[mh]))?$"
)
SPEC_HELP = "KIND@YYYY-MM-DDTHH:MM[+DURATION], e.g. click-outage@2026-11-20T14:00+60m"


class IncidentKind(StrEnum):
    CLICK_OUTAGE = "click-outage"
    BOT_BURST = "bot-burst"
    BROKEN_FEED = "broken-feed"


DEFAULT_DURATION: dict[IncidentKind, timedelta | None] = {
    IncidentKind.CLICK_OUTAGE: timedelta(hours=1),
    IncidentKind.BOT_BURST: timedelta(minutes=5),
    IncidentKind.BROKEN_FEED: None,  # until the simulation ends
}


@dataclass(frozen=True)
class Incident:
    """One incident from `start` (naive UTC) for `duration` (None: to the end of the world)."""

    kind: IncidentKind
    start: datetime
    duration: timedelta | None

    @classmethod
    def parse(cls, spec: str) -> Incident:
        """`click-outage@2026-11-20T14:00`, with an optional `+90m` or `+2h` duration."""
        found = SPEC.match(spec.strip())
        if found is None:
            raise ValueError(f"{spec!r} is not {SPEC_HELP}")
        try:
            kind = IncidentKind(found["kind"])
        except ValueError:
            known = ", ".join(k.value for k in IncidentKind)
            raise ValueError(f"unknown incident {found['kind']!r} (one of {known})") from None
        start = datetime.strptime(found["start"], "%Y-%m-%dT%H:%M")
        if found["n"] is None:
            return cls(kind, start, DEFAULT_DURATION[kind])
        size = int(found["n"])
        return cls(
            kind, start, timedelta(hours=size) if found["unit"] == "h" else timedelta(minutes=size)
        )

    def window(self, end: np.datetime64) -> tuple[np.datetime64, np.datetime64]:
        lo = np.datetime64(self.start, "us")
        return lo, end if self.duration is None else lo + np.timedelta64(self.duration)


@dataclass(frozen=True)
class Injector:
    """Applies incidents to the simulated rows: what `play` calls on each day's rows."""

    rng: np.random.Generator
    outages: tuple[tuple[np.datetime64, np.datetime64], ...]
    missing: np.ndarray  # sorted ids of issues the broken feed never published
    bots: Columns | None  # bot rows in recorded order

    @classmethod
    def build(
        cls,
        incidents: Sequence[Incident],
        rng: np.random.Generator,
        issues: pd.DataFrame,
        end: np.datetime64,
    ) -> Injector:
        """Decide what each incident takes away; bot rows come from `bot_rows` (they need the
        world) and are added with `with_bots`."""
        windows = {
            kind: [i.window(end) for i in incidents if i.kind is kind] for kind in IncidentKind
        }
        published = issues["published_at"].to_numpy()
        broken = np.zeros(len(published), dtype=bool)
        for lo, hi in windows[IncidentKind.BROKEN_FEED]:
            broken |= (published >= lo) & (published < hi)
        missing = np.sort(issues["id"].to_numpy()[broken])
        return cls(rng, tuple(windows[IncidentKind.CLICK_OUTAGE]), missing, None)

    def with_bots(self, bots: Columns | None) -> Injector:
        return Injector(self.rng, self.outages, self.missing, bots)

    def published(self, issues: pd.DataFrame) -> pd.DataFrame:
        """The issues that do get published."""
        return issues[~np.isin(issues["id"].to_numpy(), self.missing)]

    def apply(self, rows: Columns, lo: np.datetime64, hi: np.datetime64) -> Columns:
        """A batch of rows recorded in [lo, hi), incidents applied, still in recorded order."""
        recorded = rows["recorded_at"]
        keep = ~np.isin(rows["issue_id"], self.missing)
        clicks = rows["kind"] == "click"
        for start, end in self.outages:
            hit = np.flatnonzero(clicks & (recorded >= start) & (recorded < end))
            keep[hit[self.rng.random(len(hit)) < CLICK_LOSS]] = False
        if keep.all() and self.bots is None:
            return rows
        out = {name: values[keep] for name, values in rows.items()}
        if self.bots is not None:
            due = (self.bots["recorded_at"] >= lo) & (self.bots["recorded_at"] < hi)
            if due.any():
                out = {name: np.concatenate([out[name], self.bots[name][due]]) for name in out}
                order = np.argsort(out["recorded_at"], kind="stable")
                out = {name: values[order] for name, values in out.items()}
        return out

    def reads(self, reads: Columns) -> Columns:
        """Reads of issues that were published."""
        keep = ~np.isin(reads["issue_id"], self.missing)
        return reads if keep.all() else {name: values[keep] for name, values in reads.items()}


def bot_rows(
    rng: np.random.Generator, world: World, incidents: Sequence[Incident], end: np.datetime64
) -> Columns | None:
    """Each bot burst's impressions: one user active at its start, feed slots spread evenly
    over the window, issues published by then; None without a bot burst."""
    parts = []
    for incident in incidents:
        if incident.kind is not IncidentKind.BOT_BURST:
            continue
        lo, hi = incident.window(end)
        active = np.flatnonzero((world.signup <= lo) & (world.churn > hi))
        user = np.full(BOT_IMPRESSIONS, rng.choice(active))
        span = (hi - lo) / np.timedelta64(1, "s") - BOT_UPLOAD_SECONDS  # recorded inside it
        offsets = np.sort(rng.random(BOT_IMPRESSIONS)) * max(span, 0.0)
        time = lo + seconds(offsets)
        source = rng.choice(len(play.SOURCES) - 1, BOT_IMPRESSIONS)  # any feed source
        on_feed = np.ones(BOT_IMPRESSIONS, dtype=bool)
        parts.append(
            {
                "user_id": user + 1,
                "issue_id": world.pick_any(rng, time) + 1,
                "kind": np.full(BOT_IMPRESSIONS, "impression", dtype=object),
                "occurred_at": time,
                "dwell_ms": np.full(BOT_IMPRESSIONS, np.nan),
                "position": (np.arange(BOT_IMPRESSIONS) % 20).astype(float),
                "rec_context": play.rec_context(time, source, world.variant[user], on_feed),
                "recorded_at": time
                + seconds(rng.uniform(0.05, BOT_UPLOAD_SECONDS, BOT_IMPRESSIONS)),
                "session_id": np.full(BOT_IMPRESSIONS, play.hex_ids(rng, 1)[0], dtype=object),
                "surface": np.full(BOT_IMPRESSIONS, "feed", dtype=object),
                "device": np.full(BOT_IMPRESSIONS, DEVICES[world.device[user[0]]], dtype=object),
                "country": world.country[user],
            }
        )
    if not parts:
        return None
    bots = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    order = np.argsort(bots["recorded_at"], kind="stable")
    return {name: values[order] for name, values in bots.items()}
