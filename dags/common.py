"""What the Airflow DAGs share: the assets they hand over and the retry policy.

Only DAG files import this module (it imports Airflow); the steps they call never do.
"""

from __future__ import annotations

from airflow.sdk import Asset, ExceptionRetryPolicy, RetryAction, RetryRule

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
