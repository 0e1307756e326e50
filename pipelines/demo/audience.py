"""The demo audience: users with latent tastes, devices and churn, and their subscriptions.

A user's taste is a Dirichlet draw over `CATEGORIES`, so most love one to three categories; it
drives what they subscribe to here and what they click in `pipelines.demo.play`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from pipelines.demo.arrays import sample_rows, seconds
from pipelines.demo.catalogue import CATEGORIES, LANGUAGES

COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IN", "CA", "AU", "NL", "IE")
COUNTRY_SHARE = (0.28, 0.14, 0.14, 0.10, 0.08, 0.08, 0.07, 0.05, 0.04, 0.02)
NATIVE_LANGUAGE = {"DE": "de", "FR": "fr", "ES": "es"}
NATIVE_SHARE = 0.7  # of users in those countries who read in their own language, not English

DEVICES: tuple[str, ...] = ("ios", "android", "web")
DEVICE_SHARE = (0.42, 0.33, 0.25)
MOBILE = np.array([True, True, False])  # per entry of DEVICES

VARIANTS: tuple[str, ...] = ("control", "treatment")

TASTE_CONCENTRATION = 0.12  # Dirichlet alpha: most users love one to three categories
CHURN_SHARE = 0.15
NEW_USER_SHARE = 0.2  # of users who sign up inside the window
SESSIONS_MEDIAN, SESSIONS_SIGMA = 0.5, 0.9  # lognormal sessions per active day
SUBSCRIPTIONS_MEAN = 2.0
SUBSCRIBED_IN_WINDOW = 0.25  # of subscriptions made inside the window, so emitted as events


def users(
    rng: np.random.Generator, count: int, start: datetime, end: datetime
) -> tuple[pd.DataFrame, np.ndarray]:
    """Users in signup order with their behaviour, and their (count x category) taste matrix."""
    start64, end64 = np.datetime64(start, "us"), np.datetime64(end, "us")
    window = (end - start).total_seconds()
    signup = np.where(
        rng.random(count) < NEW_USER_SHARE,
        start64 + seconds(rng.uniform(0, window, count)),
        start64 - seconds(rng.uniform(86_400, 365 * 86_400, count)),
    )
    order = np.argsort(signup, kind="stable")
    signup = signup[order]
    first_active = np.maximum(signup, start64)
    churns = rng.random(count) < CHURN_SHARE
    churn = np.where(churns, _between(first_active, end64, rng.random(count)), end64)
    updated = _between(signup, end64, np.where(rng.random(count) < 0.3, rng.random(count), 0))
    country = rng.choice(len(COUNTRIES), count, p=COUNTRY_SHARE)
    countries = np.array(COUNTRIES, dtype=object)[country]
    native = np.array([LANGUAGES.index(NATIVE_LANGUAGE.get(c, "en")) for c in COUNTRIES])
    language = np.where(rng.random(count) < NATIVE_SHARE, native[country], 0)
    frame = pd.DataFrame(
        {
            "id": np.arange(1, count + 1),
            "created_at": signup,
            "updated_at": updated.astype("datetime64[us]"),
            "country": countries,
            "language": np.array(LANGUAGES, dtype=object)[language],
            "language_code": language,
            "device": rng.choice(len(DEVICES), count, p=DEVICE_SHARE),
            "sessions_per_day": np.minimum(
                rng.lognormal(np.log(SESSIONS_MEDIAN), SESSIONS_SIGMA, count), 10.0
            ),
            "churn": churn.astype("datetime64[us]"),
            "churned": churns,
            "variant": rng.integers(0, len(VARIANTS), count),
        }
    )
    tastes = rng.dirichlet(np.full(len(CATEGORIES), TASTE_CONCENTRATION), count)
    return frame, tastes


def subscriptions(
    rng: np.random.Generator,
    people: pd.DataFrame,
    tastes: np.ndarray,
    pubs: pd.DataFrame,
    start: datetime,
    end: datetime,
) -> pd.DataFrame:
    """Subscriptions to publishers of the categories a user likes; some end before `end`."""
    counts = rng.poisson(SUBSCRIPTIONS_MEAN, len(people))
    user = np.repeat(np.arange(len(people)), counts)
    category = _sample_categories(rng, tastes, user, pubs["category_code"].to_numpy())
    publisher = _sample_publishers(rng, pubs, category)
    user, publisher = _unique_pairs(user, publisher, len(pubs))
    start64, end64 = np.datetime64(start, "us"), np.datetime64(end, "us")
    signup = people["created_at"].to_numpy()[user]
    last = people["churn"].to_numpy()[user]
    first = np.maximum(signup, start64)
    in_window = (signup >= start64) | (rng.random(len(user)) < SUBSCRIBED_IN_WINDOW)
    subscribed = np.where(
        in_window,
        _between(first, last, rng.random(len(user))),
        _between(signup, start64, rng.random(len(user))),
    ).astype("datetime64[us]")
    ended = rng.random(len(user)) < 0.12
    unsubscribed = _between(subscribed, np.minimum(last, end64), rng.uniform(0.05, 1, len(user)))
    frame = pd.DataFrame(
        {
            "user_id": user + 1,
            "publisher_id": pubs["id"].to_numpy()[publisher],
            "subscribed_at": subscribed,
            "unsubscribed_at": np.where(ended, unsubscribed, np.datetime64("NaT")).astype(
                "datetime64[us]"
            ),
            "publisher": publisher,
        }
    )
    frame = frame.sort_values("subscribed_at", kind="stable", ignore_index=True)
    frame.insert(0, "id", np.arange(1, len(frame) + 1))
    return frame


def _sample_categories(
    rng: np.random.Generator, tastes: np.ndarray, user: np.ndarray, offered: np.ndarray
) -> np.ndarray:
    """One category per row from the user's taste, among categories that have publishers."""
    weights = tastes * np.isin(np.arange(len(CATEGORIES)), offered)
    return sample_rows(rng, np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)[user])


def _sample_publishers(
    rng: np.random.Generator, pubs: pd.DataFrame, category: np.ndarray
) -> np.ndarray:
    """A publisher of each row's category, the more prolific ones more often."""
    code = pubs["category_code"].to_numpy()
    order = np.argsort(code, kind="stable")
    cumulative = np.cumsum(pubs["output"].to_numpy()[order])
    first = np.searchsorted(code[order], category)
    last = np.searchsorted(code[order], category, side="right") - 1
    below = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0.0)
    draws = below + rng.random(len(category)) * (cumulative[last] - below)
    return order[np.minimum(np.searchsorted(cumulative, draws, side="right"), last)]


def _unique_pairs(
    user: np.ndarray, publisher: np.ndarray, n_publishers: int
) -> tuple[np.ndarray, np.ndarray]:
    keys = np.unique(user * n_publishers + publisher)
    return keys // n_publishers, keys % n_publishers


def _between(lo: Any, hi: Any, share: np.ndarray) -> np.ndarray:
    """The moments `share` of the way from `lo` to `hi`, element-wise."""
    span: np.ndarray = np.asarray(hi - lo)
    return np.asarray(lo + seconds(span / np.timedelta64(1, "s") * share))
