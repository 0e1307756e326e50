"""Anomaly detection over the app's per-minute series, run continuously by the exporter.

What is watched (`AnomalyMonitor.series_names`, a bounded set): events per kind
(`events:<kind>`), `impressions`, the click-through rate per surface and candidate source
(`ctr:<surface>:<source>`, clicks over impressions recorded in the same minutes), issues published
per minute (`new_issues`), and two sparse series from the lake's batch reports: the worst bad-row
share of the newest validated batch (`quarantine_rate`) and the users of the newest hourly
publish (`published_users`). The per-minute series are read by `recorded_at` (`published_at`
for issues) from the app database, incrementally: a poll reads what was recorded since the
previous one, re-reading `LATE_OVERLAP_MINUTES` for rows committed late.

Why this method:
- Baseline: for each minute, the counts over the neighbouring minutes (±`anomaly_smooth_minutes`,
  so sparse counts carry information) at the same minute of the day over the past
  `anomaly_history_days`, days on the same weekday counted `WEEKDAY_WEIGHT` times (the
  minute-of-week component), averaged with a trimmed mean (`TRIM` cut from each end). It is
  robust like a median (an incident day or a bot burst in the history is trimmed away) but,
  unlike a median, is not biased on sparse integer counts (the median of Poisson(0.3) is 0).
- Test: counts in the last 1..`anomaly_window_minutes` complete minutes (and, for drops too
  small to see in 5 minutes, the last `LONG_WINDOWS`) against the baseline's sum, scored
  with a scaled (quasi-) Poisson tail: count / phi ~ Poisson(mu / phi), the dispersion
  phi = a + b * mu fitted per series from the history (`a`: events arriving in clusters, the
  impressions of one session; `b`: the baseline's own relative error, a day busier than the
  last). Click-through rates get the scaled binomial tail of clicks out of impressions, the
  expected rate pooled over ±`RATE_SMOOTH_MINUTES`. Plain Poisson/binomial tails would raise
  alarms on every session's burst of impressions; a negative binomial's lower tail is too light
  for such clusters (a minute without a session looked impossible). Both tails are tested: a
  drop (an outage) and a burst (a bot) are both incidents. The score is -log10 of the smallest
  tail probability over the windows, so one minute of a total outage and five minutes of a
  partial one are both caught.
- Threshold: a series is active from score `anomaly_threshold` and stays active until its score
  falls below half of it (no flapping episodes). About 20 series x 10080 minutes x 13
  (window, tail) pairs (bursts in 5 windows, drops in 8) is ~3e6 correlated tests a week, so a
  threshold of 7 (p < 1e-7) leaves under one false alarm per clean week when the model fits;
  `inbo bench-anomaly` measures it on a simulated week.
- Batch series arrive once per run: the newest value is compared with the median and MAD of the
  previous ones (a robust z-score past `SPARSE_Z`).

State is in memory and bounded: one ring of `anomaly_history_days` + 1 days of minute counts per
counter, seeded from the app database on the first poll so the exporter is useful right after a
restart.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage, optimize, stats
from sqlalchemy import Engine, func, select

from inbo import app_schema
from inbo.errors import DataNotFound
from inbo.settings import Settings

log = logging.getLogger(__name__)

MINUTES_PER_DAY = 1440
LATE_OVERLAP_MINUTES = 2
"""Minutes re-read on every poll, for rows committed after a later row was read."""
WEEKDAY_WEIGHT = 3
"""How many times a past day on the same weekday counts in the baseline (minute of the week)."""
TRIM = 0.2
"""Share of the past days cut from each end before averaging: outliers and incidents."""
SPARSE_Z = 6.0
"""Robust z-score past which a batch series (quarantine rate, published users) is anomalous."""
SPARSE_HISTORY = 48
"""Batch reports a sparse series compares with."""
LONG_WINDOWS = (15, 30, 60)
"""Windows scored beyond `anomaly_window_minutes`, for drops only: a drop too small to see in 5
minutes (clicks at night) still shows within the hour. A burst is short (a bot, a retry storm)
and shows in the short windows; over an hour, sparse kinds rise by one user's clustered actions
(a user unsubscribing from 25 newsletters) more than the fitted dispersion allows, which were
`inbo bench-anomaly`'s false alarms when long windows judged bursts too."""
RATE_SMOOTH_MINUTES = 30
"""Neighbouring minutes (each side) a click-through rate's baseline pools: rates barely follow
the clock, and clicks are too sparse at night for a narrow window."""
SURFACES: tuple[str, ...] = ("feed", "email", "search")
CANDIDATE_SOURCES: tuple[str, ...] = ("recent", "popularity", "subscriptions", "explore", "search")
NO_SOURCE = "none"
"""Source label of impressions without a `rec_context` (email and search slots)."""
OTHER = "other"
"""Label of a surface or source outside the known set: keeps the label set bounded."""


@dataclass(frozen=True)
class Anomaly:
    """A series out of its seasonal band: since `start`, `observed` against `expected` in the
    window that scored highest (counts, or a ratio for `ctr:*`), `score` = -log10 tail p."""

    series: str
    start: datetime
    observed: float
    expected: float
    score: float


@dataclass(frozen=True)
class Counters:
    """The per-minute counters the series are built from, in ring row order."""

    names: tuple[str, ...]

    @classmethod
    def bounded(cls) -> Counters:
        kinds = [f"events:{k}" for k in app_schema.INTERACTION_KINDS if k != "impression"]
        pairs = [
            f"{part}:{surface}:{source}"
            for surface in (*SURFACES, OTHER)
            for source in (*CANDIDATE_SOURCES, NO_SOURCE, OTHER)
            for part in ("clicks", "shown")
        ]
        return cls((*kinds, "impressions", "new_issues", *pairs))

    def index(self, name: str) -> int:
        return self.names.index(name)


def ctr_key(surface: Any, context: Any) -> str:
    """`<surface>:<source>` of an impression or click, from bounded label sets."""
    surface = surface if surface in SURFACES else OTHER
    source = _source(context) if isinstance(context, str) and context else NO_SOURCE
    return f"{surface}:{source}"


@lru_cache(maxsize=4096)
def _source(context: str) -> str:
    try:
        found = json.loads(context)
    except ValueError:
        return OTHER
    source = found.get("source") if isinstance(found, dict) else None
    return source if source in CANDIDATE_SOURCES else OTHER


def minute_of(moment: datetime) -> int:
    """Minutes since the epoch of a naive-UTC (or aware) moment, floored."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return int((moment - datetime(1970, 1, 1)).total_seconds() // 60)


def moment_of(minute: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)


def read_minutes(engine: Engine, counters: Counters, lo: int, hi: int) -> np.ndarray:
    """Counts per counter and minute in [lo, hi) (minutes since the epoch), from the app DB."""
    out = np.zeros((len(counters.names), hi - lo))
    table = app_schema.experience_interactions
    bucket = _minute_bucket(engine, table.c.recorded_at)
    query = (
        select(bucket, table.c.kind, table.c.surface, table.c.rec_context, func.count())
        .where(table.c.recorded_at >= _naive(lo), table.c.recorded_at < _naive(hi))
        .group_by(bucket, table.c.kind, table.c.surface, table.c.rec_context)
    )
    issues = app_schema.newsletter_issues
    issue_bucket = _minute_bucket(engine, issues.c.published_at)
    issue_query = (
        select(issue_bucket, func.count())
        .where(issues.c.published_at >= _naive(lo), issues.c.published_at < _naive(hi))
        .group_by(issue_bucket)
    )
    rows = {name: i for i, name in enumerate(counters.names)}
    with engine.connect() as conn:
        for stamp, kind, surface, context, count in conn.execute(query):
            at = _bucket_minute(stamp) - lo
            if kind == "impression":
                out[rows["impressions"], at] += count
                out[rows[f"shown:{ctr_key(surface, context)}"], at] += count
            elif kind == "click":
                out[rows["events:click"], at] += count
                out[rows[f"clicks:{ctr_key(surface, context)}"], at] += count
            elif f"events:{kind}" in rows:
                out[rows[f"events:{kind}"], at] += count
        for stamp, count in conn.execute(issue_query):
            out[rows["new_issues"], _bucket_minute(stamp) - lo] += count
    return out


def _minute_bucket(engine: Engine, column: Any) -> Any:
    if engine.dialect.name == "sqlite":
        return func.substr(column, 1, 16)  # 'YYYY-MM-DD HH:MM' of SQLAlchemy's stored text
    return func.date_trunc("minute", column)


def _bucket_minute(stamp: Any) -> int:
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
    return minute_of(stamp)


def _naive(minute: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(minutes=minute)


@dataclass(frozen=True)
class Baseline:
    """How the expected value of a minute is formed from the ring of past minute counts."""

    days: int
    smooth: int

    def expected(self, ring: np.ndarray, minutes: np.ndarray) -> np.ndarray:
        """Expected counts per counter (rows of `ring`) for each minute in `minutes`:
        a weighted trimmed mean over past days of the smoothed same-minute counts."""
        back = np.arange(1, self.days + 1)
        weights = np.where(back % 7 == 0, WEEKDAY_WEIGHT, 1)
        days = np.repeat(back, weights)
        offsets = np.arange(-self.smooth, self.smooth + 1)
        at = minutes[:, None, None] - days[None, :, None] * MINUTES_PER_DAY + offsets
        smoothed = ring[:, at % ring.shape[1]].mean(axis=-1)  # counters x minutes x days
        return np.asarray(stats.trim_mean(smoothed, TRIM, axis=-1))


@dataclass(frozen=True)
class Dispersion:
    """Variance model of window counts per counter and window: var = a * mu + b * mu**2."""

    a: np.ndarray
    b: np.ndarray

    @classmethod
    def fit(cls, days: np.ndarray, windows: list[int]) -> Dispersion:
        """From `days` (counters x days x minutes of day), one (a, b) per counter and window
        size (counters x windows): squared residuals of the window sums against their in-sample
        seasonal mean, relative to mu**2, regressed on 1/mu and 1 (non-negative least squares).
        Fitted per window because clustering depends on the scale: one user's subscriptions
        spread over an hour are independent minutes but one burst in that hour."""
        a, b = np.ones((days.shape[0], len(windows))), np.zeros((days.shape[0], len(windows)))
        for col, size in enumerate(windows):
            mu, squared = _residuals(days, size)
            for row in range(days.shape[0]):
                keep = mu[row] > 0
                if not keep.any():
                    continue
                m = mu[row][keep]
                design = np.column_stack([1 / m, np.ones_like(m)])
                (a[row, col], b[row, col]), _ = optimize.nnls(design, squared[row][keep] / m**2)
        return cls(np.maximum(a, 1.0), b)


def _residuals(days: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu, squared residual) per counter of every `window`-minute sum of `days`, flattened."""
    n_counters, n_days, n_minutes = days.shape
    usable = n_minutes // window * window
    sums = days[:, :, :usable].reshape(n_counters, n_days, -1, window).sum(axis=-1)
    mu = np.broadcast_to(np.asarray(stats.trim_mean(sums, TRIM, axis=1))[:, None, :], sums.shape)
    return mu.reshape(n_counters, -1), ((sums - mu) ** 2).reshape(n_counters, -1)


def count_scores(
    observed: np.ndarray,
    mu: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    bursts: np.ndarray | bool = True,
) -> np.ndarray:
    """-log10 of the smaller tail probability of each observed count under a scaled
    (quasi-) Poisson: count / phi ~ Poisson(mu / phi), phi = a + b * mu the fitted dispersion;
    the upper tail only where `bursts` (broadcast like `observed`).

    The Poisson tails are taken through the gamma distribution so they are defined between
    integers: P(X <= k) = P(Gamma(k + 1) > lam) and P(X >= k) = P(Gamma(k) <= lam)."""
    phi = a + b * np.maximum(mu, 0.0)
    k, lam = observed / phi, np.maximum(mu, 1e-3) / phi
    low = stats.gamma.logsf(lam, k + 1)
    # A burst is judged as if at least one event were due: on a near-silent series a handful of
    # events at once is one user doing several things, not an incident.
    up = np.maximum(mu, 1.0)
    phi_up = a + b * up
    high = np.where(
        (observed > 0) & bursts,
        stats.gamma.logcdf(up / phi_up, np.maximum(observed / phi_up, 1e-9)),
        0.0,
    )
    return np.asarray(-np.minimum(low, high) / np.log(10))


def ratio_scores(
    clicks: np.ndarray,
    shown: np.ndarray,
    rate: np.ndarray,
    phi: np.ndarray,
    bursts: np.ndarray | bool = True,
) -> np.ndarray:
    """-log10 of the smaller tail of clicks out of `shown` under a scaled (quasi-) binomial with
    mean `rate` and dispersion `phi` (clicks / phi of shown / phi), the upper tail only where
    `bursts`, through the beta distribution:
    P(X <= k) = P(Beta(k + 1, n - k) > p), P(X >= k) = P(Beta(k, n - k + 1) <= p); 0 where
    nothing was shown."""
    rate = np.clip(rate, 1e-4, 1 - 1e-4)
    k = np.minimum(clicks, shown) / phi
    n = np.maximum(shown, 1.0) / phi
    low = np.where(k < n, stats.beta.logsf(rate, k + 1, np.maximum(n - k, 1e-9)), 0.0)
    high = np.where((k > 0) & bursts, stats.beta.logcdf(rate, np.maximum(k, 1e-9), n - k + 1), 0.0)
    return np.where(shown > 0, -np.minimum(low, high) / np.log(10), 0.0)


def seasonal_rate(clicks: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """In-sample rate per minute of the day from (days x minutes) counts, pooled like the
    baseline: trimmed means over days of counts over ±`RATE_SMOOTH_MINUTES`."""
    size = 2 * RATE_SMOOTH_MINUTES + 1
    k = stats.trim_mean(ndimage.uniform_filter1d(clicks, size, axis=1, mode="wrap"), TRIM, axis=0)
    n = stats.trim_mean(ndimage.uniform_filter1d(shown, size, axis=1, mode="wrap"), TRIM, axis=0)
    return np.asarray(k / np.maximum(n, 1e-9))


def fit_phi(clicks: np.ndarray, shown: np.ndarray, rates: np.ndarray, window: int) -> float:
    """Quasi-binomial dispersion of window click counts (days x minutes) around `rates` (per
    minute of the day): the Pearson statistic per degree of freedom, at least 1."""
    usable = clicks.shape[1] // window * window
    k = clicks[:, :usable].reshape(clicks.shape[0], -1, window).sum(axis=-1)
    n = shown[:, :usable].reshape(shown.shape[0], -1, window).sum(axis=-1)
    p = np.clip(rates[:usable].reshape(-1, window).mean(axis=-1), 1e-4, 1 - 1e-4)
    expected = n * p
    spread = (expected * (1 - p)).sum()
    return float(max(((k - expected) ** 2).sum() / spread, 1.0)) if spread > 0 else 1.0


@dataclass(frozen=True)
class Score:
    series: str
    start_minute: int
    observed: float
    expected: float
    score: float


class AnomalyMonitor:
    """Continuous detection over the app database's per-minute series (what the exporter runs)."""

    def __init__(self, settings: Settings) -> None:
        from pipelines.app.database import app_engine

        self.settings = settings
        self.engine = app_engine(settings.app_db)
        self.counters = Counters.bounded()
        self.baseline = Baseline(settings.anomaly_history_days, settings.anomaly_smooth_minutes)
        self.window = settings.anomaly_window_minutes
        self.threshold = settings.anomaly_threshold
        self.ring = np.zeros(
            (len(self.counters.names), (settings.anomaly_history_days + 1) * MINUTES_PER_DAY)
        )
        self.read_to: int | None = None  # minutes before this are in the ring
        self.fitted_at: int | None = None
        self.windows = [*range(1, self.window + 1), *(w for w in LONG_WINDOWS if w > self.window)]
        self.bursts = np.array(self.windows) <= self.window  # long windows judge drops only
        shape = (len(self.counters.names), len(self.windows))
        self.dispersion = Dispersion(np.ones(shape), np.zeros(shape))  # fitted on the first poll
        self.rates = Baseline(settings.anomaly_history_days, RATE_SMOOTH_MINUTES)
        self.expected = np.zeros_like(self.ring)  # each minute's baseline, once computed
        self.wide = np.zeros_like(self.ring)  # the same pooled over ±RATE_SMOOTH_MINUTES
        self.expected_to: int | None = None
        self.phi: dict[str, float] = {}
        self.active: dict[str, Anomaly] = {}
        self.series_names: list[str] = self._names(seen=set())

    def poll(self, now: datetime | None = None) -> list[Anomaly]:
        """Read rows recorded up to `now`, score the minutes completed since, return the
        anomalies active now (a series stays active, with its first `start`, until it calms)."""
        current = minute_of(now or datetime.now(UTC))
        self._read(current)
        if self.fitted_at is None or current - self.fitted_at >= MINUTES_PER_DAY:
            self._fit(current)
        scores = [*self._minute_scores(current - 1), *self._batch_scores()]
        for found in scores:
            held = self.active.get(found.series)
            if found.score >= self.threshold or (held and found.score >= self.threshold / 2):
                start = held.start if held else moment_of(found.start_minute)
                self.active[found.series] = Anomaly(
                    found.series, start, found.observed, found.expected, found.score
                )
            elif held:
                log.info("anomaly on %s over (since %s)", found.series, held.start)
                del self.active[found.series]
        return list(self.active.values())

    def _read(self, current: int) -> None:
        span = self.ring.shape[1]
        if self.read_to is None or current - self.read_to >= span:
            lo = current - span + 1
            self.ring[:] = 0
            self.expected_to = None
        else:
            lo = self.read_to - LATE_OVERLAP_MINUTES
        counts = read_minutes(self.engine, self.counters, lo, current + 1)
        self.ring[:, np.arange(lo, current + 1) % span] = counts
        self.read_to = current

    def past_days(self, current: int) -> np.ndarray:
        """The ring's whole past days before `current`, counters x days x minutes of day."""
        days = self.baseline.days
        first = (current // MINUTES_PER_DAY - days) * MINUTES_PER_DAY
        at = np.arange(first, first + days * MINUTES_PER_DAY) % self.ring.shape[1]
        return self.ring[:, at].reshape(len(self.counters.names), days, MINUTES_PER_DAY)

    def _fit(self, current: int) -> None:
        days = self.past_days(current)
        self.dispersion = Dispersion.fit(days, self.windows)
        seen = set()
        for pair in self._pairs():
            shown = days[self.counters.index(f"shown:{pair}")]
            if shown.sum() > 0:
                seen.add(pair)
                clicks = days[self.counters.index(f"clicks:{pair}")]
                self.phi[pair] = fit_phi(clicks, shown, seasonal_rate(clicks, shown), self.window)
        self.series_names = self._names(seen)
        self.fitted_at = current
        log.debug("anomaly model fitted at %s on %d series", moment_of(current), len(seen))

    def _pairs(self) -> list[str]:
        return [n.removeprefix("shown:") for n in self.counters.names if n.startswith("shown:")]

    def _names(self, seen: set[str]) -> list[str]:
        counts = [n for n in self.counters.names if not n.startswith(("shown:", "clicks:"))]
        ctr = [f"ctr:{pair}" for pair in self._pairs() if pair in seen]
        return [*counts, *ctr, "quarantine_rate", "published_users"]

    def _minute_scores(self, last: int) -> list[Score]:
        """Scores of every series over the windows ending at minute `last`."""
        widths = np.array(self.windows) - 1
        at = np.arange(last, last - self.windows[-1], -1) % self.ring.shape[1]  # newest first
        self._expect(last)
        observed = np.cumsum(self.ring[:, at], axis=1)[:, widths]  # counters x windows
        expected = np.cumsum(self.expected[:, at], axis=1)[:, widths]
        wide = np.cumsum(self.wide[:, at], axis=1)[:, widths]
        rows = [self.counters.index(n) for n in self.series_names if n in self.counters.names]
        a, b = self.dispersion.a[rows], self.dispersion.b[rows]
        scored = count_scores(observed[rows], expected[rows], a, b, self.bursts)
        out = [self._best(self.counters.names[r], s, observed[r], expected[r], last)
               for r, s in zip(rows, scored, strict=True)]  # fmt: skip
        pairs = [n.removeprefix("ctr:") for n in self.series_names if n.startswith("ctr:")]
        if pairs:
            clicks = np.array([observed[self.counters.index(f"clicks:{p}")] for p in pairs])
            shown = np.array([observed[self.counters.index(f"shown:{p}")] for p in pairs])
            base_clicks = np.array([wide[self.counters.index(f"clicks:{p}")] for p in pairs])
            base_shown = np.array([wide[self.counters.index(f"shown:{p}")] for p in pairs])
            rate = base_clicks / np.maximum(base_shown, 1e-9)
            phi = np.array([[self.phi[p]] for p in pairs])
            scored = ratio_scores(clicks, shown, rate, phi, self.bursts)
            for p, s, k, n, r in zip(pairs, scored, clicks, shown, rate, strict=True):
                ratio = np.where(n > 0, k / np.maximum(n, 1), 0.0)
                out.append(self._best(f"ctr:{p}", s, ratio, r, last))
        return out

    def _expect(self, last: int) -> None:
        """Baselines of the minutes up to `last` not computed yet: they read whole past days only,
        which no longer change, so each minute's is computed once."""
        first = last - self.windows[-1] + 1
        if self.expected_to is not None:
            first = max(first, self.expected_to + 1)
        if first > last:
            return
        minutes = np.arange(first, last + 1)
        span = self.ring.shape[1]
        self.expected[:, minutes % span] = self.baseline.expected(self.ring, minutes)
        self.wide[:, minutes % span] = self.rates.expected(self.ring, minutes)
        self.expected_to = last

    def _best(
        self, series: str, scores: np.ndarray, observed: np.ndarray, expected: np.ndarray, last: int
    ) -> Score:
        """The window (of `self.windows` minutes up to `last`) with the highest score."""
        w = int(np.argmax(scores))
        start = last - self.windows[w] + 1
        return Score(series, start, float(observed[w]), float(expected[w]), float(scores[w]))

    def _batch_scores(self) -> list[Score]:
        """The newest quarantine rate and published users against the batches before them."""
        out = []
        for series, values in batch_series(self.settings).items():
            if len(values) < 3:
                continue
            *before, (batch, value) = values
            past = np.array([v for _, v in before])
            median = float(np.median(past))
            mad = float(stats.median_abs_deviation(past, scale="normal"))
            z = abs(value - median) / max(mad, 0.05 * abs(median), 1e-3)
            minute = minute_of(datetime.strptime(batch, "%Y%m%dT%H%MZ"))
            out.append(Score(series, minute, value, median, z / SPARSE_Z * self.threshold))
        return out


def batch_series(settings: Settings) -> dict[str, list[tuple[str, float]]]:
    """(batch, value) of the newest `SPARSE_HISTORY` batches: worst bad-row share per validated
    batch, users per hourly publish that wrote a table; empty before any batch ran."""
    from inbo import tables
    from inbo.lake import Lake
    from pipelines.hourly import PUBLISHED, HourlyPublish
    from pipelines.validate import read_report

    lake = Lake(settings.lake)
    quarantine: list[tuple[str, float]] = []
    published: list[tuple[str, float]] = []
    try:
        for batch in lake.names(tables.VALIDATE_REPORTS)[-SPARSE_HISTORY:]:
            shares = read_report(lake, batch).bad_share.values()
            quarantine.append((batch, max(shares, default=0.0)))
        for name in lake.names(tables.HOURLY_REPORTS)[-SPARSE_HISTORY:]:
            report = HourlyPublish(**json.loads(lake.read_json(tables.HOURLY_REPORTS, name)))
            if report.status == PUBLISHED:
                published.append((report.batch, float(report.users)))
    except (DataNotFound, FileNotFoundError):
        log.debug("no batch reports in %s yet", settings.lake)
    return {"quarantine_rate": quarantine, "published_users": published}
