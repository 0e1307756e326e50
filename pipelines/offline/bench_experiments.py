"""A/B benchmark in the closed loop: champion pipeline against popularity, and the readout's
error rates measured on the same logs.

`inbo play` runs the A/B for `days` days on a world of `users` users (history first, the
experiment started after its power check, the DAGs through Airflow). On its logs:

- the readout at every simulated hour since the start (events before that hour), so "hours until
  the always-valid interval excluded zero" is measured, not extrapolated;
- the final readout of every metric with 95% intervals, p-values and CUPED's variance cut;
- the simulator's ground truth: the CTR lift its response model expects for the slots it showed;
- A/A calibration: `splits` re-saltings of the exposed users, fixed-horizon false-positive rate at
  the last look, sequential rate over the daily looks;
- the sample-ratio check against a 3% loss of one variant's exposures, at the A/B's size and
  at larger audiences (hashed ids: the check only counts users), as detection rates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from inbo.lake import Lake
from inbo.settings import REPO_ROOT, Settings
from pipelines.demo.closed_loop import read_play_record
from pipelines.experiments.analysis import (
    Readout,
    exposure_looks,
    looks_until,
    read_out_look,
)
from pipelines.experiments.calibration import A, B, aa_calibration, resalted, wilson, without_share
from pipelines.experiments.config import Experiment
from pipelines.experiments.lifecycle import read_state
from pipelines.experiments.statistics import (
    DEFAULT_SRM_THRESHOLD,
    MetricResult,
    MetricSpec,
    analyze,
    sample_ratio,
)
from pipelines.offline.bench import replace_section

DOC = REPO_ROOT / "docs" / "benchmarks.md"
SECTION = "experiments-bench"
HEADING = "\n\n## A/B testing in the closed loop\n"
EXPERIMENT = "ranker-vs-popularity"
SRM_LOSS = 0.03
SRM_AUDIENCES = (50_000, 100_000, 200_000)
"""Exposed users at which the 3% loss is also tried (hashed ids, no logs needed: SRM counts)."""


@dataclass(frozen=True)
class ExperimentsParams:
    users: int = 20_000
    days: int = 7
    history_days: int = 14
    seed: int = 7
    splits: int = 200
    played: Path | None = None  # reuse a played var dir instead of playing again


@dataclass(frozen=True)
class MetricRow:
    metric: str
    role: str
    control: float
    treatment: float
    lift: float
    lift_ci: tuple[float, float]
    pvalue: float
    pvalue_adjusted: float
    variance_reduction: float


@dataclass(frozen=True)
class SrmRow:
    audience: str
    users: int
    trials: int
    flagged_share: float
    flagged_interval: tuple[float, float]


@dataclass(frozen=True)
class ExperimentsReport:
    params: ExperimentsParams
    play_seconds: float | None
    users: dict[str, int]
    impressions: dict[str, int]
    srm_pvalue: float
    verdict: str
    metrics: list[MetricRow]
    conclusive_after_hours: int | None
    hours_observed: int
    truth_ctr_lift: float
    truth_ctr_ci: tuple[float, float]
    truth_within_measured: bool
    clicks_vs_expected: dict[str, tuple[int, float, float]]
    aa_splits: int
    aa_looks: int
    aa_fixed_rate: float
    aa_fixed_ci: tuple[float, float]
    aa_sequential_rate: float
    aa_sequential_ci: tuple[float, float]
    injected_srm_pvalue: float
    srm: list[SrmRow]
    analysis_seconds: float


def run_experiments_bench(settings: Settings, params: ExperimentsParams) -> ExperimentsReport:
    home = params.played or settings.var_dir / "bench" / "experiments"
    if params.played is None:
        play(home, params)
    record = read_play_record(home / "simulation")
    if record is not None:  # the world as it was played, whatever this command's defaults say
        params = replace(
            params, **{k: record[k] for k in ("users", "days", "history_days", "seed")}
        )
    play_seconds = None if record is None else float(record["seconds"])
    started = time.perf_counter()
    played = Settings(var_dir=home)
    state = read_state(Lake(played.lake), EXPERIMENT)
    experiment = state.experiment()
    end = state.started() + timedelta(days=params.days)
    hourly = exposure_looks(state, looks_until(state, end, timedelta(hours=1)), played)
    readouts = [read_out_look(state, moment, users) for moment, users in hourly]
    final = readouts[-1]
    treatment = next(name for name in final.users if name != experiment.control)
    conclusive = _first_conclusive(readouts, treatment)
    daily = [
        users
        for moment, users in hourly
        if (moment - state.started()) % timedelta(days=1) == timedelta(0)
    ]
    calibration = aa_calibration(daily, experiment, params.splits, planned_users=len(daily[-1]))
    users = hourly[-1][1]
    injected = sample_ratio(
        without_share(users, treatment, SRM_LOSS, seed=params.seed)["variant"]
        .value_counts()
        .to_dict(),
        experiment.weights,
    )
    truth_lift, truth_ci, expected_clicks = _truth_ctr_lift(home, experiment, treatment)
    clicks = users.groupby("variant")["clicks"].sum()
    primary = final.primary(treatment)
    return ExperimentsReport(
        params=params,
        play_seconds=play_seconds,
        users=final.users,
        impressions=final.impressions,
        srm_pvalue=final.ratio.pvalue,
        verdict=final.verdicts[treatment],
        metrics=[_metric_row(r) for r in final.results],
        conclusive_after_hours=conclusive,
        hours_observed=len(readouts),
        truth_ctr_lift=truth_lift,
        truth_ctr_ci=truth_ci,
        truth_within_measured=primary.rel_effect_ci[0] <= truth_lift <= primary.rel_effect_ci[1],
        clicks_vs_expected={
            name: (int(clicks[name]), expected, (int(clicks[name]) - expected) / np.sqrt(expected))
            for name, expected in expected_clicks.items()
        },
        aa_splits=calibration.splits,
        aa_looks=calibration.looks,
        aa_fixed_rate=calibration.fixed_rate,
        aa_fixed_ci=calibration.fixed_interval,
        aa_sequential_rate=calibration.sequential_rate,
        aa_sequential_ci=calibration.sequential_interval,
        injected_srm_pvalue=injected.pvalue,
        srm=_srm_rates(users, params.splits),
        analysis_seconds=round(time.perf_counter() - started, 1),
    )


def play(home: Path, params: ExperimentsParams) -> None:
    """`inbo play` with the repo's experiment, in a fresh var dir (it records its own time)."""
    if home.exists():
        shutil.rmtree(home)
    inbo = str(Path(sys.executable).with_name("inbo"))
    env = {**os.environ, "INBO_VAR_DIR": str(home)}
    env.pop("INBO_REDIS_URL", None)
    command = [
        inbo, "play", "--days", str(params.days), "--users", str(params.users),
        "--history-days", str(params.history_days), "--seed", str(params.seed),
        "--experiment", EXPERIMENT,
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, env=env, cwd=REPO_ROOT)
    finally:  # the embedded Redis the play started, even when it failed
        subprocess.run([inbo, "services", "--stop"], check=False, env=env, cwd=REPO_ROOT)


def _first_conclusive(readouts: list[Readout], treatment: str) -> int | None:
    """Hours from the start to the first look whose always-valid interval excludes zero."""
    for hours, readout in enumerate(readouts, 1):
        if readout.results and readout.primary(treatment).sequential_significant:
            return hours
    return None


def _truth_ctr_lift(
    home: Path, experiment: Experiment, treatment: str
) -> tuple[float, tuple[float, float], dict[str, float]]:
    """The CTR lift the simulator's response model expects for the slots it showed, with its
    95% interval over users (the delta method, as the measured one), and the expected clicks
    per variant."""
    from pipelines.demo.closed_loop import read_truth

    truth = read_truth(home / "simulation")
    truth = truth.dropna(subset=["variant"])
    per_user = truth.groupby("user_id").agg(
        variant=("variant", "first"),
        impressions=("impressions", "sum"),
        expected_clicks=("expected_clicks", "sum"),
    )
    per_user["variant"] = per_user["variant"].str.removeprefix(f"{experiment.name}/")
    per_user = per_user[per_user["impressions"] > 0].reset_index()
    (result,) = analyze(
        per_user,
        [MetricSpec("true_ctr", "expected_clicks", "impressions", role="primary")],
        experiment.control,
        treatment,
        experiment.alpha,
    )
    expected = per_user.groupby("variant")["expected_clicks"].sum()
    return result.rel_effect, result.rel_effect_ci, {k: float(v) for k, v in expected.items()}


def _srm_rates(users: pd.DataFrame, trials: int) -> list[SrmRow]:
    """How often a 3% loss of one half's users is flagged, over fresh 50/50 splits."""
    rows = []
    audiences = [("the A/B's exposed users", users[["user_id"]])]
    audiences += [
        ("hashed ids", pd.DataFrame({"user_id": np.arange(1, n + 1)})) for n in SRM_AUDIENCES
    ]
    for label, ids in audiences:
        flagged = 0
        for trial in range(trials):
            broken = without_share(resalted(ids, f"srm-{trial}"), B, SRM_LOSS, seed=trial)
            counts = broken["variant"].value_counts().to_dict()
            flagged += sample_ratio(counts, {A: 1, B: 1}).mismatch
        rows.append(SrmRow(label, len(ids), trials, flagged / trials, wilson(flagged, trials)))
    return rows


def _metric_row(result: MetricResult) -> MetricRow:
    return MetricRow(
        result.metric, result.role, result.control_value, result.treatment_value,
        result.rel_effect, result.rel_effect_ci, result.pvalue, result.pvalue_adjusted,
        result.variance_reduction,
    )  # fmt: skip


def format_report(report: ExperimentsReport) -> str:
    from pipelines.experiments.report import p_value

    p = report.params
    played = (
        f"`inbo play --days {p.days} --users {p.users:,} --history-days {p.history_days} "
        f"--seed {p.seed} --experiment {EXPERIMENT}` took {report.play_seconds:,.0f} s"
        + ("" if p.played is None else f" (under {p.played}, reused)")
        if report.play_seconds is not None
        else f"(the loop under {p.played}, played without `inbo play`'s record)"
    )
    users = ", ".join(f"{k} {v:,}" for k, v in report.users.items())
    impressions = ", ".join(f"{k} {v:,}" for k, v in report.impressions.items())
    lines = [
        f"`inbo bench-experiments`: {played}; the analysis {report.analysis_seconds:,.0f} s. "
        f"Exposed users: {users} (impressions {impressions}); sample ratio p = "
        f"{report.srm_pvalue:.3g}. Verdict: **{report.verdict}**.",
        "",
        "| metric | role | popularity | champion | lift | 95% CI | p | p (BH) | CUPED variance cut |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report.metrics:
        lines.append(
            f"| {m.metric} | {m.role} | {m.control:.4g} | {m.treatment:.4g} | {m.lift:+.1%} | "
            f"[{m.lift_ci[0]:+.1%}, {m.lift_ci[1]:+.1%}] | {p_value(m.pvalue)} | "
            f"{p_value(m.pvalue_adjusted)} | {m.variance_reduction:.1%} |"
        )
    conclusive = (
        f"{report.conclusive_after_hours} simulated hours"
        if report.conclusive_after_hours is not None
        else f"not within the {report.hours_observed} hours observed"
    )
    lines += [
        "",
        f"- Always-valid interval of the CTR lift first excluded zero after **{conclusive}** "
        "(the readout recomputed at every simulated hour from the events before it).",
        f"- Ground truth: the simulator's response model expects a CTR lift of "
        f"{report.truth_ctr_lift:+.1%} [{report.truth_ctr_ci[0]:+.1%}, "
        f"{report.truth_ctr_ci[1]:+.1%}] for the slots it showed; inside the measured 95% "
        f"interval: **{'yes' if report.truth_within_measured else 'no'}**. Clicks logged against "
        "the model's expectation, per arm (z = (logged - expected) / sqrt(expected), the Bernoulli "
        "noise alone; rows still in flight or quarantined at the end are not logged): "
        + "; ".join(
            f"{name} {logged:,} vs {expected:,.0f} (z = {z:+.2f})"
            for name, (logged, expected, z) in report.clicks_vs_expected.items()
        )
        + ".",
        f"- A/A calibration, {report.aa_splits} re-saltings of the exposed users: fixed-horizon "
        f"false positives {report.aa_fixed_rate:.1%} [{report.aa_fixed_ci[0]:.1%}, "
        f"{report.aa_fixed_ci[1]:.1%}] at alpha 5%; sequential over {report.aa_looks} daily looks "
        f"{report.aa_sequential_rate:.1%} [{report.aa_sequential_ci[0]:.1%}, "
        f"{report.aa_sequential_ci[1]:.1%}] (Wilson 95% intervals).",
        f"- Sample ratio: dropping {SRM_LOSS:.0%} of the champion arm's exposed users gives "
        f"p = {report.injected_srm_pvalue:.3g}: "
        f"{'flagged' if report.injected_srm_pvalue < DEFAULT_SRM_THRESHOLD else 'not flagged'} "
        f"(the check flags p < {DEFAULT_SRM_THRESHOLD:g}). Share of fresh 50/50 splits in which the same loss is flagged:",
        "",
        "| audience | users | splits | flagged | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for row in report.srm:
        lines.append(
            f"| {row.audience} | {row.users:,} | {row.trials} | {row.flagged_share:.0%} | "
            f"[{row.flagged_interval[0]:.0%}, {row.flagged_interval[1]:.0%}] |"
        )
    return "\n".join(lines)


def write_doc(report: ExperimentsReport, doc: Path = DOC) -> None:
    replace_section(doc, SECTION, format_report(report), HEADING)


def as_json(report: ExperimentsReport) -> str:
    return json.dumps(asdict(report), indent=2, default=str)
