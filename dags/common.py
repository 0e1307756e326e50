"""What the Airflow DAGs share: the assets they hand over, the retry policy, the batch a run
processes, and the alerts a failed or late run raises.

Only DAG files import this module (it imports Airflow); the steps they call never do.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import (
    Asset,
    Context,
    DeadlineAlert,
    DeadlineReference,
    ExceptionRetryPolicy,
    RetryAction,
    RetryRule,
    SyncCallback,
    get_current_context,
)

from pipelines.monitoring.notify import Alert, Severity, one_line, send_alert

log = logging.getLogger(__name__)

USER_EVENTS = Asset(name="inbo_user_events", uri="inbo://lake/user_events")
INTERACTIONS = Asset(name="inbo_interactions", uri="inbo://lake/features/interactions")
RECS = Asset(name="inbo_recs", uri="inbo://lake/recs")
REDIS_TABLE = Asset(name="inbo_redis_recs", uri="inbo://redis/recs")

RETRY_TRANSIENT_ONLY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception="inbo.errors.ServiceUnavailable",
            action=RetryAction.RETRY,
            reason="a service dropped out or a lock is held: it may be free on the next try",
        ),
        RetryRule(
            exception=[
                "inbo.errors.InboError",
                "builtins.TypeError",
                "builtins.ValueError",
                "builtins.KeyError",
                "builtins.AttributeError",
                "builtins.NameError",
                "builtins.ImportError",
            ],
            action=RetryAction.FAIL,
            reason="bad data, configuration or code: a retry gives the same answer",
        ),
    ]
)
"""Outages (Redis, MLflow, the app DB) and busy locks are retried; deterministic failures are not."""


def batch_end() -> datetime:
    """The end of the running task's batch: its run's data interval end.

    A run triggered without a logical date (the REST API's default in Airflow 3) has no data
    interval; its batch is then the last one complete at `run_after`, as a scheduled run at that
    moment would have processed.
    """
    context = get_current_context()
    end = context.get("data_interval_end")
    if end is not None:
        return end
    return last_tick(context["dag"].timetable.expression, context["dag_run"].run_after)


def last_tick(expression: str, at: datetime) -> datetime:
    """The latest time at or before `at` that the cron `expression` (UTC) fires."""
    from croniter import croniter

    # croniter's get_prev is strictly earlier; cron fires on whole minutes, so a second later
    # still finds `at` itself when it is a tick
    tick: datetime = croniter(expression, at + timedelta(seconds=1)).get_prev(datetime)
    return tick


def task_failed(context: Context) -> None:
    """`on_failure_callback` of every task: it failed for good (a retryable error's last try, or
    an error the retry policy does not retry). Tries that will be retried raise no alert: the
    policy only retries outages, and the next try or the last one's alert tells the story."""
    ti = context["ti"]
    task = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
    alert = Alert(
        title="Airflow task failed",
        severity=Severity.CRITICAL,
        dag=ti.dag_id,
        task=task,
        run=ti.run_id,
        try_number=ti.try_number,
        error=one_line(context.get("exception")),
        log_url=ti.log_url,
        when=ti.end_date or datetime.now(UTC),
    )
    send_alert(alert)


def run_failed(context: Context) -> None:
    """The DAG's `on_failure_callback`. A run failed by a task was already reported by
    `task_failed`, with its error, so it is only logged; a run failed otherwise (timed out, its
    tasks deadlocked) alerts here."""
    reason = str(context.get("reason", ""))
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    if reason == "task_failure":
        log.info("run %s of %s failed; its failed task has alerted", run_id, dag_id)
        return
    alert = Alert(
        title="Airflow run failed",
        severity=Severity.CRITICAL,
        dag=dag_id,
        run=run_id,
        error=reason,
        when=datetime.now(UTC),
    )
    send_alert(alert)


def run_deadline(minutes: float) -> DeadlineAlert | None:
    """A run still unfinished `minutes` after it was queued calls `deadline_missed` (Airflow 3's
    replacement for SLAs); no deadline for 0. A `SyncCallback`: it runs on the executor, since
    `inbo airflow` starts no triggerer for an `AsyncCallback`.

    Airflow 3.3.2's `dag.test()` (and so `airflow dags test`) fails after a successful run of a DAG
    with a deadline: it prunes the run's deadlines looking each up by the id the dag processor
    gives it, but holds the deadline's definition instead. Foreground runs set 0."""
    if not minutes:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=SyncCallback(deadline_missed, kwargs={"minutes": minutes}),
    )


def deadline_missed(context: dict[str, Any], minutes: float) -> None:
    """The deadline callback. Its context is the scheduler's JSON snapshot of the run (`dag_run`)
    and the `deadline`, not a task context. A run that failed meanwhile has alerted already."""
    run = context["dag_run"]
    if run["state"] == "failed":
        log.info("run %s of %s missed its deadline after failing", run["dag_run_id"], run["dag_id"])
        return
    missed = context["deadline"]["deadline_time"]
    alert = Alert(
        title="Airflow run past its deadline",
        severity=Severity.WARNING,
        dag=run["dag_id"],
        run=run["dag_run_id"],
        error=f"still {run['state']} {minutes:g} min after it was queued ({run['queued_at']})",
        when=datetime.fromisoformat(missed) if isinstance(missed, str) else missed,
    )
    send_alert(alert)
