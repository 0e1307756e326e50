"""
### inbo_nightly

Rebuilds every user's recommendation table from the day's app data, once a night.

`ingest` (app DB rows since the watermark, raw checks, canonical conversion) -> `validate` (Great
Expectations suites, quarantine, threshold) -> `build_interactions` (weighted user-item table and
continue reading) -> `fit_baselines` (time-decayed popularity, continue reading; logged to MLflow)
-> `score_users` (top-N per user, no already-read items, a reason on every item) -> `publish`
(stage a new Redis table version) -> `verify` (completeness and contract checks) -> `activate`
(switch the pointer atomically; the previous version stays for `inbo rollback`).

Each task calls one library function with the run's data interval; big data moves through the
lake, XCom carries only small summaries. Re-running a date gives the same tables.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pendulum
from airflow.sdk import (
    Asset,
    CronDataIntervalTimetable,
    ExceptionRetryPolicy,
    RetryAction,
    RetryRule,
    dag,
    task,
)

USER_EVENTS = Asset(name="inbo_user_events", uri="inbo://lake/user_events")
INTERACTIONS = Asset(name="inbo_interactions", uri="inbo://lake/features/interactions")
RECS = Asset(name="inbo_recs", uri="inbo://lake/recs")
REDIS_TABLE = Asset(name="inbo_redis_recs", uri="inbo://redis/recs")

RETRY_TRANSIENT_ONLY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[
                "inbo.errors.ValidationFailed",
                "inbo.errors.ConfigError",
                "inbo.errors.SourceError",
                "inbo.errors.DataNotFound",
                "builtins.TypeError",
                "builtins.ValueError",
                "builtins.KeyError",
                "builtins.AttributeError",
            ],
            action=RetryAction.FAIL,
            reason="bad data, configuration or code: a retry gives the same answer",
        )
    ]
)
"""Services that drop out (Redis, MLflow, the app DB) are retried; deterministic failures are not."""


@dag(
    dag_id="inbo_nightly",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["inbo", "nightly", "recommendations"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_policy": RETRY_TRANSIENT_ONLY,
    },
)
def inbo_nightly() -> None:
    @task
    def ingest(data_interval_end: datetime | None = None) -> dict[str, object]:
        from pipelines.ingest import ingest

        report = ingest(data_interval_end)
        return {
            "batch": report.batch,
            "extracted": report.extracted,
            "quarantined": report.quarantined,
        }

    @task(outlets=[USER_EVENTS])
    def validate(
        _: dict[str, object], data_interval_end: datetime | None = None
    ) -> dict[str, object]:
        from pipelines.validate import validate_batch

        report = validate_batch(data_interval_end)
        return {
            "passed": report.passed,
            "quarantined": report.quarantined,
            "data_docs": report.data_docs,
        }

    @task(outlets=[INTERACTIONS])
    def build_interactions(_: dict[str, object], data_interval_end: datetime | None = None) -> int:
        from features.interactions import build_interactions

        return build_interactions(data_interval_end).pairs

    @task
    def fit_baselines(_: int, data_interval_end: datetime | None = None) -> str:
        from pipelines.train import fit_baselines

        return fit_baselines(data_interval_end).run_id

    @task(outlets=[RECS])
    def score_users(_: str, data_interval_end: datetime | None = None) -> int:
        from pipelines.recommend import score_users

        return score_users(data_interval_end).users

    @task
    def publish(_: int, models_run: str, data_interval_end: datetime | None = None) -> str:
        from pipelines.publish import publish_batch

        return publish_batch(data_interval_end, models_run_id=models_run)

    @task
    def verify(version: str, data_interval_end: datetime | None = None) -> str:
        from pipelines.publish import verify_batch

        return verify_batch(data_interval_end, version)

    @task(outlets=[REDIS_TABLE])
    def activate(version: str) -> str:
        from pipelines.publish import activate_version

        activate_version(version)
        return version

    ingested = ingest()
    validated = validate(ingested)
    pairs = build_interactions(validated)
    models_run = fit_baselines(pairs)
    activate(verify(publish(score_users(models_run), models_run)))


inbo_nightly()
