"""MLflow tracking: every training step logs its params, metrics, data window and the git commit.

Runs are keyed by (step, batch): re-running a step for the same batch resumes its run instead of
adding a second one, so the run id a task returns is stable for its interval.
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inbo.errors import ServiceUnavailable
from inbo.services import masked_url
from inbo.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

EXPERIMENT = "inbo-nightly"


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


def _experiment_id(settings: Settings, name: str) -> str:
    import mlflow

    connect(settings)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    return str(mlflow.create_experiment(name, artifact_location=settings.mlflow_artifacts.as_uri()))


def log_step_run(
    settings: Settings,
    step: str,
    batch: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    artifacts: Path | None = None,
    experiment: str = EXPERIMENT,
) -> str:
    """Log one pipeline step's run for `batch` (in `experiment`) and return its run id."""
    import mlflow

    experiment_id = _experiment_id(settings, experiment)
    existing = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.step = '{step}' and tags.batch = '{batch}'",
        output_format="list",
        max_results=1,
    )
    run_id = existing[0].info.run_id if existing else None
    with mlflow.start_run(
        run_id=run_id, experiment_id=experiment_id, run_name=f"{step}-{batch}"
    ) as run:
        mlflow.set_tags({"step": step, "batch": batch, "mlflow.source.git.commit": git_commit()})
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
