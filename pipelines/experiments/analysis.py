"""Reading an experiment out: who was exposed, every metric per variant, and the verdicts.

A readout is computed from the lake's canonical events since the experiment started: exposed
users with their variant and counts (`exposure`), the pre-period's counts as CUPED covariates,
then the sample-ratio check first. A mismatch withholds every verdict (something drops or
duplicates exposures, so no comparison can be trusted); otherwise each treatment is compared with
the control on the primary, secondary and guardrail metrics (`statistics.analyze`).

Where a readout goes: one Parquet file per analysis in the lake (`experiments/results`), one
MLflow run, and the experiment's HTML report (`pipelines.experiments.report`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from pipelines.experiments.config import Experiment, Metric
from pipelines.experiments.exposure import (
    exposed_users,
    pre_period_counts,
    window_events,
    with_pre_period,
)
from pipelines.experiments.lifecycle import ExperimentState, read_state, read_states
from pipelines.experiments.power import RATIOS
from pipelines.experiments.statistics import (
    MetricResult,
    MetricSpec,
    Role,
    SampleRatio,
    analyze,
    sample_ratio,
)

log = logging.getLogger(__name__)

RESULTS_TABLE = "experiments/results"
"""One file per analysis: `experiments/results/experiment=<name>/<batch>.parquet`."""
YOUNG = timedelta(days=2)
"""An experiment this young is analysed every hour (a broken variant shows early); then daily."""
MLFLOW_EXPERIMENT = "inbo-ab-tests"

WITHHELD = "withheld: sample ratio mismatch"
BETTER, WORSE = "better", "worse"
INCONCLUSIVE, NO_DIFFERENCE = "not conclusive yet", "no detectable difference"
GUARDRAIL_BREACHED = "guardrail breached"


def metric_specs(experiment: Experiment) -> list[MetricSpec]:
    """The experiment's metrics in readout order, each with its pre-period covariates (CUPED)."""
    roles: list[tuple[Metric, Role]] = [
        (experiment.primary_metric, "primary"),
        *((m, "secondary") for m in experiment.secondary_metrics),
        *((m, "guardrail") for m in experiment.guardrail_metrics),
    ]
    specs = []
    for metric, role in roles:
        numerator, denominator = RATIOS[metric]
        covariates = tuple(f"pre_{c}" for c in (numerator, denominator) if c is not None)
        specs.append(MetricSpec(str(metric), numerator, denominator, covariates, role))
    return specs


@dataclass(frozen=True)
class Readout:
    """One analysis of an experiment over [window_start, window_end)."""

    experiment: str
    window_start: datetime
    window_end: datetime
    users: dict[str, int]
    impressions: dict[str, int]
    ratio: SampleRatio
    results: list[MetricResult]
    verdicts: dict[str, str]

    @property
    def batch(self) -> str:
        return batch_key(self.window_end)

    def primary(self, treatment: str) -> MetricResult:
        return next(r for r in self.results if r.treatment == treatment and r.role == "primary")

    def rows(self) -> pd.DataFrame:
        """The readout as the lake table's rows: one per (treatment, metric)."""
        base = {
            "experiment": self.experiment,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "srm_pvalue": self.ratio.pvalue,
            "srm_mismatch": self.ratio.mismatch,
        }
        rows = []
        for result in self.results:
            fields = asdict(result)
            for name in ("effect_ci", "rel_effect_ci", "sequential_ci"):
                fields[f"{name}_lower"], fields[f"{name}_upper"] = fields.pop(name)
            rows.append(
                {
                    **base,
                    **fields,
                    "control_users": self.users[result.control],
                    "treatment_users": self.users[result.treatment],
                    "verdict": self.verdicts[result.treatment],
                }
            )
        return pd.DataFrame(rows)


def read_out(
    experiment: Experiment,
    users: pd.DataFrame,
    window: tuple[datetime, datetime],
    planned_users: int | None = None,
    planned_end: datetime | None = None,
) -> Readout:
    """The readout of a per-user frame (`variant`, the counts and their `pre_` columns).

    `planned_users` (all variants together at the planned end) tunes the confidence sequence;
    `planned_end` says whether the fixed-horizon test may be read yet."""
    weights = experiment.weights
    counts = users["variant"].value_counts()
    ratio = sample_ratio({name: int(counts.get(name, 0)) for name in weights}, weights)
    treatments = [name for name in weights if name != experiment.control]
    results: list[MetricResult] = []
    if ratio.mismatch:
        log.warning(
            "experiment %s: sample ratio mismatch (p=%.2g), exposures %s against weights %s; "
            "verdicts withheld: find what drops or duplicates exposures before reading any metric",
            experiment.name, ratio.pvalue, ratio.counts, weights,
        )  # fmt: skip
        verdicts = dict.fromkeys(treatments, WITHHELD)
    elif any(ratio.counts[name] < 2 for name in weights):
        verdicts = dict.fromkeys(treatments, INCONCLUSIVE)
    else:
        specs = metric_specs(experiment)
        finished = planned_end is not None and window[1] >= planned_end
        verdicts = {}
        for treatment in treatments:
            found = analyze(
                users, specs, experiment.control, treatment, experiment.alpha,
                _pair_planned(planned_users, weights, experiment.control, treatment),
            )  # fmt: skip
            results.extend(found)
            verdicts[treatment] = _verdict(found, experiment.alpha, finished)
    impressions = users.groupby("variant")["impressions"].sum()
    return Readout(
        experiment.name,
        window[0],
        window[1],
        {name: int(counts.get(name, 0)) for name in weights},
        {name: int(impressions.get(name, 0)) for name in weights},
        ratio,
        results,
        verdicts,
    )


def _pair_planned(
    planned_users: int | None,
    weights: dict[str, float],
    control: str,
    treatment: str,
) -> int | None:
    """The planned users of one control-treatment pair: fixed for the experiment's whole life,
    so its confidence sequence stays one sequence across looks (any fixed value is valid; the
    plan's is where it is tightest)."""
    if planned_users is None:
        return None
    share = (weights[control] + weights[treatment]) / sum(weights.values())
    return max(round(planned_users * share), 1)


HARMFUL_IF_UP = {str(Metric.DISMISSALS_PER_USER), str(Metric.UNSUBSCRIBES_PER_USER)}


def _verdict(results: Sequence[MetricResult], alpha: float, finished: bool) -> str:
    """The primary metric decides: its always-valid interval at any look, its fixed-horizon
    test from the planned end on. A guardrail significantly worse (by the same rule) overrides
    a win. Dismissals and unsubscribes are better down, every other metric up."""

    def significant(result: MetricResult) -> bool:
        return result.sequential_significant or (finished and result.pvalue < alpha)

    def improved(result: MetricResult) -> bool:
        return (result.effect < 0) == (result.metric in HARMFUL_IF_UP)

    primary = next(r for r in results if r.role == "primary")
    breached = [
        r.metric for r in results if r.role == "guardrail" and significant(r) and not improved(r)
    ]
    if breached:
        return f"{GUARDRAIL_BREACHED} ({', '.join(breached)})"
    if significant(primary):
        return BETTER if improved(primary) else WORSE
    return NO_DIFFERENCE if finished else INCONCLUSIVE


def analyze_experiment(
    name: str, at: datetime, settings: Settings | None = None, every: timedelta = timedelta(days=1)
) -> tuple[Readout, list[Readout]]:
    """The readout at `at` and the cumulative readouts at each `every` since the start (the
    report's timeline), from one read of the events."""
    settings = settings or get_settings()
    state = read_state(Lake(settings.lake), name)
    looks = exposure_looks(state, looks_until(state, at, every), settings)
    timeline = [read_out_look(state, moment, users) for moment, users in looks]
    return timeline[-1], timeline


def looks_until(state: ExperimentState, at: datetime, every: timedelta) -> list[datetime]:
    """Look times from the start every `every`, the last one `at` (or the stop, if earlier)."""
    start, stopped = state.started(), state.stopped()
    end = min(at, stopped) if stopped is not None else at
    steps = max(int(np.ceil((end - start) / every)), 1)
    return [min(start + every * (step + 1), end) for step in range(steps)]


def exposure_looks(
    state: ExperimentState, moments: Sequence[datetime], settings: Settings
) -> list[tuple[datetime, pd.DataFrame]]:
    """The exposed users (with pre-period covariates) from the start until each moment."""
    lake = Lake(settings.lake)
    start = state.started()
    during = window_events(lake, start, max(moments))
    before = window_events(lake, start - timedelta(days=state.experiment().planned_days), start)
    pre = pre_period_counts(before)
    return [
        (
            moment,
            with_pre_period(
                exposed_users(during[during["ts"] < pd.Timestamp(moment)], state.name), pre
            ),
        )
        for moment in moments
    ]


def read_out_look(state: ExperimentState, moment: datetime, users: pd.DataFrame) -> Readout:
    """`read_out` for a started experiment: its planned size and end from its state."""
    experiment = state.experiment()
    expected = state.power.get("users_expected")
    planned_users = expected if isinstance(expected, int) and expected > 0 else None
    planned_end = state.started() + timedelta(days=experiment.planned_days)
    return read_out(experiment, users, (state.started(), moment), planned_users, planned_end)


def due_experiments(at: datetime, settings: Settings | None = None) -> list[str]:
    """The experiments the `inbo_experiments` run at `at` analyses: those serving at `at` or
    stopped within the last day (their final readout), every hour while young, else at
    midnight."""
    settings = settings or get_settings()
    midnight = at.hour == 0 and at.minute == 0
    found = []
    for state in read_states(Lake(settings.lake)).values():
        stopped = state.stopped()
        recent = state.started() < at and (stopped is None or stopped > at - timedelta(days=1))
        if recent and (midnight or at - state.started() <= YOUNG):
            found.append(state.name)
    return sorted(found)


def write_results(readout: Readout, settings: Settings) -> str:
    """The readout's rows in the lake, one file per analysis (a re-run replaces its own)."""
    return Lake(settings.lake).write(
        readout.rows(), RESULTS_TABLE, readout.batch, {"experiment": readout.experiment}
    )


def read_results(name: str, settings: Settings | None = None) -> pd.DataFrame:
    settings = settings or get_settings()
    return Lake(settings.lake).read(RESULTS_TABLE, {"experiment": name})


def log_readout(readout: Readout, report: str | None, settings: Settings) -> str:
    """One MLflow run per analysis: the users, the SRM p-value, each metric's lift and p-value."""
    from pathlib import Path

    from pipelines.tracking import log_step_run

    metrics: dict[str, float] = {"srm_pvalue": readout.ratio.pvalue}
    metrics |= {f"users.{name}": float(count) for name, count in readout.users.items()}
    for r in readout.results:
        stem = f"{r.metric}.{r.treatment}"
        metrics |= {
            f"{stem}.rel_effect": r.rel_effect,
            f"{stem}.pvalue": r.pvalue,
            f"{stem}.variance_reduction": r.variance_reduction,
        }
    finite = {key: value for key, value in metrics.items() if np.isfinite(value)}
    return log_step_run(
        settings,
        f"ab-{readout.experiment}",
        readout.batch,
        params={"experiment": readout.experiment, "window_start": readout.window_start.isoformat()},
        metrics=finite,
        artifacts=None if report is None else Path(report).parent,
        experiment=MLFLOW_EXPERIMENT,
        tags={"verdicts": "; ".join(f"{k}: {v}" for k, v in readout.verdicts.items())},
    )
