"""Analysing experiments where their readouts go: the lake table, MLflow, the HTML report.

`report_experiment` is what `inbo experiment report NAME` runs; `analyze_experiments` is the
`inbo_experiments` DAG's task: every experiment that is due at the run's interval end (hourly
while young, daily after).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from inbo.settings import Settings, get_settings
from pipelines.experiments.analysis import (
    Readout,
    analyze_experiment,
    due_experiments,
    log_readout,
    write_results,
)
from pipelines.experiments.report import write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentReport:
    readout: Readout
    results: str
    report: Path
    mlflow_run: str


def report_experiment(
    name: str, at: datetime, settings: Settings | None = None
) -> ExperimentReport:
    """Analyse `name` with the events up to `at`; write its results, report and MLflow run."""
    settings = settings or get_settings()
    readout, timeline = analyze_experiment(name, at, settings)
    results = write_results(readout, settings)
    report = write_report(readout, timeline, settings)
    run_id = log_readout(readout, str(report), settings)
    log.info("experiment %s at %s: %s", name, readout.batch, readout.verdicts)
    return ExperimentReport(readout, results, report, run_id)


def analyze_experiments(
    interval_end: datetime, settings: Settings | None = None
) -> dict[str, object]:
    """The `inbo_experiments` task: report every running experiment due at `interval_end`."""
    settings = settings or get_settings()
    # Airflow hands a pendulum DateTime, whose differences do not compare with timedeltas
    interval_end = datetime.fromtimestamp(interval_end.timestamp(), UTC)
    summary: dict[str, object] = {}
    for name in due_experiments(interval_end, settings):
        done = report_experiment(name, interval_end, settings)
        summary[name] = {
            "users": done.readout.users,
            "srm_pvalue": done.readout.ratio.pvalue,
            "verdicts": done.readout.verdicts,
            "report": str(done.report),
        }
    log.info("experiments analysed at %s: %s", interval_end, sorted(summary) or "none due")
    return summary
