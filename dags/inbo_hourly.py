"""
### inbo_hourly

Keeps the live recommendations fresh between nightly retrains, on `INBO_HOURLY_SCHEDULE` (hourly by
default; any cron works, nothing assumes an hour).

`ingest` (app rows since the shared watermark, exactly once) -> `validate` (the nightly's Great
Expectations suites, quarantine, threshold) -> `build_activity` (item and user activity over
1 h / 24 h / 7 d, the reranker's item features at the interval end) and `embed_new_items` (MiniLM
vectors of new issues only) -> `score_active_users` (users with events since the live table's last
refresh: champion ALS fold-in, candidates incl. the new issues, champion reranker) ->
`publish_active_users` (one SET per user into the live table version, under the publish lock; the
event-to-live latency goes to MLflow and `inbo status`). `reconcile_counters` checks the app's
Redis `ItemFeature` counters against the lake after validation, in report mode; a manual run with
`repair_counters` on and `confirm` set to `repair` rewrites drifted counters after a backup.

Nightly and hourly share the ingest lock (one watermark stream) and the publish lock (the pointer
switch vs. writes into the live version); a new nightly version is caught up by the next run.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from common import (
    REDIS_TABLE,
    RETRY_TRANSIENT_ONLY,
    USER_EVENTS,
    batch_end,
    run_deadline,
    run_failed,
    task_failed,
)
from inbo.settings import get_settings

REPAIR_CONFIRMATION = "repair"


@dag(
    dag_id="inbo_hourly",
    schedule=CronDataIntervalTimetable(get_settings().hourly_schedule, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["inbo", "hourly", "recommendations"],
    params={
        "repair_counters": Param(
            False,
            type="boolean",
            description="Rewrite drifted ItemFeature counters from the lake (after a backup).",
        ),
        "confirm": Param(
            "",
            type="string",
            description=f"Type '{REPAIR_CONFIRMATION}' to let repair_counters write to the app's Redis.",
        ),
    },
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_policy": RETRY_TRANSIENT_ONLY,
        "on_failure_callback": task_failed,
    },
    on_failure_callback=run_failed,
    deadline=run_deadline(get_settings().hourly_deadline_minutes),
)
def inbo_hourly() -> None:
    @task
    def ingest() -> dict[str, object]:
        from pipelines.ingest import ingest_exclusive

        report = ingest_exclusive(batch_end())
        return {"batch": report.batch, "extracted": report.extracted}

    @task(outlets=[USER_EVENTS])
    def validate(_: dict[str, object]) -> dict:
        from pipelines.validate import validate_exclusive

        report = validate_exclusive(batch_end())
        return {"passed": report.passed, "quarantined": report.quarantined}

    @task
    def build_activity(_: dict) -> int:
        from features.activity import build_activity

        return build_activity(batch_end()).items

    @task
    def embed_new_items(_: dict) -> int:
        from features.embeddings import embed_new_items

        return embed_new_items(batch_end()).encoded

    @task
    def score_active_users(_: int, __: int) -> int:
        from pipelines.hourly import score_active_users

        return score_active_users(batch_end()).users_scored

    @task(outlets=[REDIS_TABLE])
    def publish_active_users(_: int) -> dict:
        from pipelines.hourly import publish_active_users

        report = publish_active_users(batch_end())
        return {
            "status": report.status,
            "users": report.users,
            "freshness_seconds": report.freshness_seconds,
        }

    @task
    def reconcile_counters(_: dict) -> dict:
        from pipelines.reconcile import reconcile_counters

        params = get_current_context()["params"]
        repair = bool(params["repair_counters"])
        if repair and params["confirm"] != REPAIR_CONFIRMATION:
            raise ValueError(
                f"repair_counters needs confirm='{REPAIR_CONFIRMATION}'; nothing was written"
            )
        report = reconcile_counters(batch_end(), repair=repair)
        return {
            "inconsistency_rate": report.inconsistency_rate,
            "inconsistent_items": report.inconsistent_items,
            "backup": report.backup,
        }

    validated = validate(ingest())
    scored = score_active_users(build_activity(validated), embed_new_items(validated))
    publish_active_users(scored)
    reconcile_counters(validated)


inbo_hourly()
