"""Whether an experiment can see its minimum detectable effect in its planned length.

The check replays the planned length just before the start: the users active in that window
stand for the users the experiment will expose (times its traffic share), and their per-user
counts give the primary metric's variance. tea-tasting's power analysis (delta method for
ratio metrics, `pipelines.experiments.statistics.minimum_detectable_effect`) then gives the
smallest relative lift detectable with that many users split over the variants.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from inbo.errors import ConfigError
from inbo.lake import Lake
from inbo.settings import Settings, get_settings
from pipelines.experiments.config import Experiment, Metric
from pipelines.experiments.exposure import user_counts, window_events
from pipelines.experiments.statistics import MetricSpec, minimum_detectable_effect

log = logging.getLogger(__name__)

RATIOS: dict[Metric, tuple[str, str | None]] = {
    Metric.CTR: ("clicks", "impressions"),
    Metric.READ_RATE: ("reads", "impressions"),
    Metric.READS_PER_USER: ("reads", None),
    Metric.CLICKS_PER_USER: ("clicks", None),
    Metric.DISMISSALS_PER_USER: ("dismissals", None),
    Metric.UNSUBSCRIBES_PER_USER: ("unsubscribes", None),
}
"""Each metric as (numerator, denominator) per-user counts; no denominator: a mean per user."""


def power_check(
    experiment: Experiment, at: datetime, settings: Settings | None = None
) -> dict[str, object]:
    """The experiment's power at `at`: users expected, the detectable lift; `ConfigError` when
    the planned length cannot reach `minimum_detectable_effect`."""
    settings = settings or get_settings()
    start = at - timedelta(days=experiment.planned_days)
    counts = user_counts(window_events(Lake(settings.lake), start, at))
    numerator, denominator = RATIOS[experiment.primary_metric]
    if denominator is not None:
        counts = counts[counts[denominator] > 0]
    users = round(len(counts) * experiment.traffic)
    if users < 2 * len(experiment.variants):
        raise ConfigError(
            f"experiment {experiment.name}: only {users} users were active in the "
            f"{experiment.planned_days:g} days before {at:%Y-%m-%d %H:%M}; nothing to power a test on"
        )
    metric = MetricSpec(str(experiment.primary_metric), numerator, denominator, role="primary")
    detectable = minimum_detectable_effect(
        counts.reset_index(),
        metric,
        users // len(experiment.variants),
        alpha=experiment.alpha,
        power=experiment.power,
    )
    report: dict[str, object] = {
        "users_expected": users,
        "detectable_lift": round(detectable, 4),
        "minimum_detectable_effect": experiment.minimum_detectable_effect,
        "alpha": experiment.alpha,
        "power": experiment.power,
        "window": [start.isoformat(), at.isoformat()],
    }
    log.info("power of %s: %s", experiment.name, report)
    if detectable > experiment.minimum_detectable_effect:
        raise ConfigError(
            f"experiment {experiment.name} cannot reach its minimum detectable effect of "
            f"{experiment.minimum_detectable_effect:.1%} in {experiment.planned_days:g} days: with "
            f"the ~{users:,} users of the last {experiment.planned_days:g} days it detects "
            f"{detectable:.1%} at power {experiment.power:.0%}; plan longer or aim higher"
        )
    return report
