"""The simulated world as arrays for the day loop, and the issues each candidate source can pick.

`World` holds the catalogue and the audience the way `pipelines.demo.play` reads them: issues in
published order, users in id order (index = id - 1), and issues keyed by publisher and by
category so "a recent issue of this publisher" is one `searchsorted`. `Following` is who follows
which publisher at one moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

RECENT_WINDOW = np.timedelta64(3, "D")  # how far back the "recent" source looks
SUBSCRIPTION_WINDOW = np.timedelta64(7, "D")  # how far back the "subscriptions" source looks


@dataclass(frozen=True)
class World:
    """The static world as arrays: issues in published order, users in id order (index = id-1)."""

    published: np.ndarray
    publisher: np.ndarray
    category: np.ndarray
    language: np.ndarray
    quality: np.ndarray
    read_seconds: np.ndarray
    signup: np.ndarray
    churn: np.ndarray
    sessions_per_day: np.ndarray
    relative_taste: np.ndarray  # taste / the user's top taste, so 1.0 = favourite category
    cumulative_taste: np.ndarray
    device: np.ndarray
    country: np.ndarray
    user_language: np.ndarray
    variant: np.ndarray
    subscribed: np.ndarray
    unsubscribed: np.ndarray
    follower: np.ndarray
    followed: np.ndarray
    n_publishers: int
    origin: np.datetime64  # time keys below are seconds since the first issue
    span: int  # seconds per publisher or category block of those keys
    by_publisher: tuple[np.ndarray, np.ndarray]
    by_category: tuple[np.ndarray, np.ndarray]

    @classmethod
    def build(
        cls,
        people: pd.DataFrame,
        tastes: np.ndarray,
        issues: pd.DataFrame,
        subs: pd.DataFrame,
        n_publishers: int,
        end: datetime,
    ) -> World:
        published = issues["published_at"].to_numpy()
        origin = published.min()
        span = int((np.datetime64(end, "us") - origin) // np.timedelta64(1, "s")) + 86_400
        seconds = _seconds_since(origin, published)
        return cls(
            published=published,
            publisher=issues["publisher"].to_numpy(),
            category=issues["category_code"].to_numpy(),
            language=issues["language_code"].to_numpy(),
            quality=issues["quality"].to_numpy(),
            read_seconds=issues["read_seconds"].to_numpy(),
            signup=people["created_at"].to_numpy(),
            churn=people["churn"].to_numpy(),
            sessions_per_day=people["sessions_per_day"].to_numpy(),
            relative_taste=tastes / tastes.max(axis=1, keepdims=True),
            cumulative_taste=np.cumsum(tastes, axis=1),
            device=people["device"].to_numpy(),
            country=people["country"].to_numpy(dtype=object),
            user_language=people["language_code"].to_numpy(),
            variant=people["variant"].to_numpy(),
            subscribed=subs["subscribed_at"].to_numpy(),
            unsubscribed=subs["unsubscribed_at"].to_numpy(),
            follower=subs["user_id"].to_numpy() - 1,
            followed=subs["publisher"].to_numpy(),
            n_publishers=n_publishers,
            origin=origin,
            span=span,
            by_publisher=_sorted_keys(issues["publisher"].to_numpy() * span + seconds),
            by_category=_sorted_keys(issues["category_code"].to_numpy() * span + seconds),
        )

    def pick_any(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        """A uniformly random issue published by each time; -1 where there is none."""
        hi = np.searchsorted(self.published, times, side="right")
        return _uniform_in(rng, np.zeros_like(hi), hi)

    def pick_recent(self, rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        lo = np.searchsorted(self.published, times - RECENT_WINDOW)
        hi = np.searchsorted(self.published, times, side="right")
        return _uniform_in(rng, lo, hi)

    def pick_popular(
        self, rng: np.random.Generator, times: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        """An issue published by each time, drawn in proportion to `weights`."""
        cumulative = np.cumsum(weights)
        hi = np.searchsorted(self.published, times, side="right")
        total = np.where(hi > 0, cumulative[np.maximum(hi - 1, 0)], 0.0)
        drawn = np.searchsorted(cumulative, rng.random(len(times)) * total, side="right")
        return np.where(hi > 0, np.minimum(drawn, hi - 1), -1)

    def pick_from_publishers(
        self, rng: np.random.Generator, publisher: np.ndarray, times: np.ndarray
    ) -> np.ndarray:
        """A recent issue of each publisher, else its latest one; -1 if it has none yet."""
        keys, order = self.by_publisher
        base = publisher * self.span
        lo = np.searchsorted(keys, base + _seconds_since(self.origin, times - SUBSCRIPTION_WINDOW))
        hi = np.searchsorted(keys, base + _seconds_since(self.origin, times), side="right")
        latest = np.where(
            (hi > 0) & (keys[np.maximum(hi - 1, 0)] // self.span == publisher), hi - 1, -1
        )
        at = _uniform_in(rng, lo, hi)
        at = np.where(at >= 0, at, latest)
        return np.where(at >= 0, order[at], -1)

    def pick_in_categories(
        self, rng: np.random.Generator, category: np.ndarray, times: np.ndarray
    ) -> np.ndarray:
        keys, order = self.by_category
        lo = np.searchsorted(keys, category * self.span)
        hi = np.searchsorted(
            keys, category * self.span + _seconds_since(self.origin, times), "right"
        )
        at = _uniform_in(rng, lo, hi)
        return np.where(at >= 0, order[at], -1)

    def latest_issue(self, publisher: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Each publisher's latest issue by each time; every publisher must have one by then."""
        keys, order = self.by_publisher
        hi = np.searchsorted(
            keys, publisher * self.span + _seconds_since(self.origin, times), "right"
        )
        return order[hi - 1]


@dataclass(frozen=True)
class Following:
    """Who follows which publisher at one moment: sorted `user * n_publishers + publisher` keys."""

    keys: np.ndarray
    first: np.ndarray  # per user, where their keys start
    count: np.ndarray
    n_publishers: int

    @classmethod
    def at(cls, world: World, moment: np.datetime64) -> Following:
        active = (world.subscribed <= moment) & ~(world.unsubscribed <= moment)
        keys = np.sort(world.follower[active] * world.n_publishers + world.followed[active])
        count = np.bincount(keys // world.n_publishers, minlength=len(world.signup))
        return cls(keys, np.cumsum(count) - count, count, world.n_publishers)

    def follows(self, user: np.ndarray, publisher: np.ndarray) -> np.ndarray:
        key = user * self.n_publishers + publisher
        at = np.minimum(np.searchsorted(self.keys, key), max(len(self.keys) - 1, 0))
        return self.keys[at] == key if len(self.keys) else np.zeros(len(key), dtype=bool)

    def sample(self, rng: np.random.Generator, user: np.ndarray) -> np.ndarray:
        """One followed publisher per row; every user in `user` must follow at least one."""
        at = self.first[user] + (rng.random(len(user)) * self.count[user]).astype(np.int64)
        return self.keys[at] % self.n_publishers


def _seconds_since(origin: np.datetime64, times: np.ndarray) -> np.ndarray:
    return np.maximum((times - origin) // np.timedelta64(1, "s"), 0).astype(np.int64)


def _sorted_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    return keys[order], order


def _uniform_in(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A uniform index in [lo, hi) per row; -1 where the range is empty."""
    drawn = lo + (rng.random(len(lo)) * (hi - lo)).astype(np.int64)
    return np.where(hi > lo, drawn, -1)
