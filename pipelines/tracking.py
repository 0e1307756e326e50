"""MLflow tracking: every training step logs its params, metrics, data window and the git commit.

Runs are keyed by (step, batch): re-running a step for the same batch resumes its run instead of
adding a second one, so the run id a task returns is stable for its interval.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbo.errors import ServiceUnavailable
from inbo.services import masked_url
from inbo.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

EXPERIMENT = "inbo-nightly"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""The tag MLflow 3's UI reads to open an experiment as model training, not the GenAI traces view."""


@dataclass(frozen=True)
class LoggedRun:
    """What a run recorded, as the gate reads it to describe a registered version."""

    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def metric_key(column: str, k: int) -> str:
    """A metric's MLflow name with its list length: the evaluation's `ndcg_at_k` is `ndcg_at_10`."""
    return column.replace("_at_k", f"_at_{k}")


def git_commit() -> str:
    """The commit the code runs from, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


PROBE_SECONDS = 5.0
"""How long a tracking server may take to answer its health check before it counts as down."""
HTTP_RETRIES = "2"
"""MLflow's own retries per request (default 7, with backoff: minutes before an error)."""


def connect(settings: Settings) -> Any:
    """An MlflowClient on the platform's tracking URI (also set for the fluent `mlflow.*` API).

    A tracking server is asked for its health first, so an unreachable one fails in seconds
    with one clear error instead of after MLflow's retries.
    """
    import mlflow

    if settings.mlflow_uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
        _probe(settings.mlflow_uri)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return mlflow.MlflowClient()


def _probe(uri: str) -> None:
    """Raise `ServiceUnavailable` unless the tracking server answers `/health`."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_SECONDS):
            return
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
        reason = getattr(exc, "reason", exc)
        raise ServiceUnavailable(
            f"MLflow at {masked_url(uri)} is unreachable: {reason}; check INBO_MLFLOW_TRACKING_URI"
        ) from None


def experiment_id(settings: Settings, name: str) -> str:
    """The id of experiment `name`, created (artifacts under var/) and typed if it is new.

    An experiment created before it carried the kind tag is tagged now, so it too opens as model
    training in the MLflow UI.
    """
    client = connect(settings)
    found = client.get_experiment_by_name(name)
    if found is None:
        settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        return str(
            client.create_experiment(
                name, artifact_location=settings.mlflow_artifacts.as_uri(), tags=EXPERIMENT_KIND
            )
        )
    for key, value in EXPERIMENT_KIND.items():
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return str(found.experiment_id)


def log_step_run(
    settings: Settings,
    step: str,
    batch: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    artifacts: Path | None = None,
    experiment: str = EXPERIMENT,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log one pipeline step's run for `batch` (in `experiment`) and return its run id."""
    import mlflow

    experiment = experiment_id(settings, experiment)
    existing = mlflow.search_runs(
        [experiment],
        filter_string=f"tags.step = '{step}' and tags.batch = '{batch}'",
        output_format="list",
        max_results=1,
    )
    run_id = existing[0].info.run_id if existing else None
    with mlflow.start_run(
        run_id=run_id, experiment_id=experiment, run_name=f"{step}-{batch}"
    ) as run:
        mlflow.set_tags(
            {"step": step, "batch": batch, "mlflow.source.git.commit": git_commit(), **(tags or {})}
        )
        if run_id is None:
            mlflow.log_params(dict(params))
        mlflow.log_metrics(dict(metrics))
        if artifacts is not None:
            mlflow.log_artifacts(str(artifacts), artifact_path=step)
    log.info("MLflow run %s for %s/%s", run.info.run_id, step, batch)
    return str(run.info.run_id)


def step_run_id(settings: Settings, step: str, batch: str) -> str | None:
    """The run a step logged for `batch` (what `log_step_run` resumes), or None."""
    client = connect(settings)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        f"tags.step = '{step}' and tags.batch = '{batch}'",
        max_results=1,
    )
    return str(found[0].info.run_id) if found else None


def log_to_run(
    settings: Settings, run_id: str, params: Mapping[str, object], metrics: Mapping[str, float]
) -> None:
    """Add params and metrics to a finished run (held-out scores on the run of their model).

    Params the run already has are left alone: MLflow refuses to change a param, and a re-run of
    the evaluation for the same batch logs the same values.
    """
    from mlflow.entities import Metric, Param

    client = connect(settings)
    logged = client.get_run(run_id).data.params
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(name, float(value), now, 0) for name, value in metrics.items()],
        params=[Param(name, str(value)) for name, value in params.items() if name not in logged],
    )


def read_run(settings: Settings, run_id: str) -> LoggedRun:
    data = connect(settings).get_run(run_id).data
    return LoggedRun(run_id, dict(data.params), dict(data.metrics), dict(data.tags))
