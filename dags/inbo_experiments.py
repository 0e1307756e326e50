"""
### inbo_experiments

Reads out the running A/B experiments (`experiments.yml`, docs/experiments.md), every hour.

`analyze_experiments`: each experiment that is due (every hour for its first two days, so a
broken variant shows early, then once a day at midnight) is analysed from the lake's canonical
events since its start: the sample-ratio check first (a mismatch withholds every verdict), then
each metric per variant with CUPED, the fixed-horizon test and the always-valid interval. Its
rows go to the lake (`experiments/results`), its numbers to an MLflow run (experiment
`inbo-ab-tests`), its HTML report to `var/reports/experiments/<name>/<batch>/report.html`.

The readout is always valid, so looking at it every hour costs nothing in false positives; the
fixed-horizon p-value is for the planned end.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from common import RETRY_TRANSIENT_ONLY, batch_end, run_failed, task_failed


@dag(
    dag_id="inbo_experiments",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["inbo", "experiments"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_policy": RETRY_TRANSIENT_ONLY,
        "on_failure_callback": task_failed,
    },
    on_failure_callback=run_failed,
)
def inbo_experiments() -> None:
    @task
    def analyze_experiments() -> dict[str, object]:
        from pipelines.experiments.readouts import analyze_experiments

        return analyze_experiments(batch_end())

    analyze_experiments()


inbo_experiments()
