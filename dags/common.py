"""What the Airflow DAGs share: the assets they hand over, the retry policy, and the batch a run
processes.

Only DAG files import this module (it imports Airflow); the steps they call never do.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, ExceptionRetryPolicy, RetryAction, RetryRule, get_current_context

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
