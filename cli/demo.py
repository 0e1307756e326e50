"""`inbo demo`: a demo world, the nightly and one hourly run through Airflow, and what they published.

The DAGs run as `airflow dags test` subprocesses, as an operator would run them; this module only
starts them and renders their results, it never imports Airflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.table import Table

from cli.app import app, console, err, interval_end
from cli.operations import reconcile
from cli.pipeline import simulate
from cli.serving import recs, status
from inbo.errors import InboError
from inbo.settings import REPO_ROOT, Settings, get_settings

PANEL = "Demo"


@app.command(rich_help_panel=PANEL)
def demo(
    users: Annotated[int, typer.Option(min=10, help="Users in the demo world.")] = 2000,
    items: Annotated[int, typer.Option(min=10, help="Newsletter issues.")] = 500,
    days: Annotated[int, typer.Option(min=2, help="Days of app activity before today.")] = 14,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same world.")] = 7,
) -> None:
    """Generate a demo world, run the nightly DAG and then one hourly run through Airflow, show
    what they published and how the app's counters reconcile."""
    from inbo.services import ensure_redis
    from pipelines.publish.steps import sample_users

    started = time.monotonic()
    settings = get_settings()
    end = interval_end(None)
    simulate(
        users=users,
        items=items,
        days=days,
        seed=seed,
        dirty_share=0.001,
        counter_drift=0.0002,
        date=f"{end:%Y-%m-%d}",
        hours_after=1,
    )
    redis_url = ensure_redis(settings)
    log_path = run_airflow_dag("inbo_nightly", end, settings)
    console.print(f"[green]inbo_nightly succeeded[/green] (Airflow log: {log_path})")
    console.print(run_summary(settings, end))
    for user_id in sample_users(3, settings):
        recs(user_id, as_json=False, limit=5)
    hour = end + timedelta(hours=1)
    log_path = run_airflow_dag("inbo_hourly", hour, settings)
    console.print(f"\n[green]inbo_hourly succeeded[/green] (Airflow log: {log_path})")
    status()
    console.print(
        f"(the demo replays the hour to {hour:%H:%M} UTC today, so freshness also counts the time "
        "since then; `inbo bench-hourly` times a refresh on its own)"
    )
    reconcile(repair=False, restore=None, yes=False, at=hour.isoformat())
    console.print(f"\ndemo finished in {time.monotonic() - started:.0f} s\n")
    print(next_steps(redis_url, end, settings))


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment for an Airflow command: this repo's airflow.cfg and DAGs, with Airflow's
    own state (metadata DB, logs) under the settings' var dir, so a run on another var dir (a
    test's, a benchmark's) never touches the demo's. Values the caller set explicitly win."""
    env = dict(os.environ)
    airflow_state = settings.var_dir / "airflow"
    env.setdefault("AIRFLOW_HOME", str(REPO_ROOT))
    env.setdefault("AIRFLOW_CONFIG", str(REPO_ROOT / "airflow.cfg"))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
    env.setdefault(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{airflow_state / 'airflow.db'}"
    )
    env.setdefault("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(airflow_state / "logs"))
    env.setdefault(
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY",
        str(airflow_state / "logs" / "dag_processor"),
    )
    env["INBO_VAR_DIR"] = str(settings.var_dir)
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    return env


def run_airflow_dag(dag_id: str, end: datetime, settings: Settings) -> Path:
    """`airflow dags test` for the batch ending at `end`; Airflow's output goes to a log file."""
    log_dir = settings.var_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    (settings.var_dir / "airflow").mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{dag_id}-{end:%Y%m%dT%H%M}.log"
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = airflow_env(settings)
    with log_path.open("w") as log_file:
        err.print("preparing the Airflow database ...")
        _run([airflow, "db", "migrate"], env, log_file, log_path)
        err.print(f"running {dag_id} for the interval ending {end:%Y-%m-%d %H:%M} UTC ...")
        _run([airflow, "dags", "test", dag_id, end.isoformat()], env, log_file, log_path)
    return log_path


def _run(command: list[str], env: dict[str, str], log_file: IO[str], log_path: Path) -> None:
    result = subprocess.run(
        command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT
    )
    if result.returncode != 0:
        raise InboError(
            f"`{' '.join(command[1:])}` failed (exit {result.returncode}); see {log_path}"
        )


def run_summary(settings: Settings, end: datetime) -> Table:
    """What the nightly's ingest and validation did: extracted, quarantined, passed."""
    from inbo import tables
    from inbo.lake import Lake, batch_key
    from pipelines.ingest import read_report as ingest_report
    from pipelines.validate import read_report as validation_report

    lake = Lake(settings.lake)
    batch = batch_key(end)
    ingest = ingest_report(lake, batch)
    validated = validation_report(lake, batch)
    table = Table("step", "figures", title=f"batch {batch}")
    table.add_row("extracted", ", ".join(f"{k}={v:,}" for k, v in ingest.extracted.items()))
    table.add_row("conversion rate", f"{100 * ingest.conversion_rate:.2f}%")
    quarantined = {
        **ingest.quarantined,
        **{f"{k} (validate)": v for k, v in validated.quarantined.items() if v},
    }
    table.add_row("quarantined", ", ".join(f"{k}={v:,}" for k, v in quarantined.items()) or "none")
    if quarantined:
        table.add_row(
            "quarantine files", f"{lake.path(tables.QUARANTINE_ROOT)}/<table>/batch={batch}/"
        )
    table.add_row("passed validation", ", ".join(f"{k}={v:,}" for k, v in validated.passed.items()))
    for name, page in validated.data_docs.items():
        table.add_row(f"Data Docs: {name}", page)
    return table


def next_steps(redis_url: str, end: datetime, settings: Settings) -> str:
    from pipelines.publish.steps import redis_cli_example

    venv = Path(sys.executable).parent
    return "\n".join(
        [
            "Where to look next:",
            f"  recommendations  {venv}/inbo recs <USER_ID>",
            f"  redis-cli        {redis_cli_example(redis_url, settings.redis_prefix)}",
            f"  Airflow UI       AIRFLOW_HOME={REPO_ROOT} {venv}/airflow standalone   (http://localhost:8080)",
            f"  MLflow UI        {venv}/mlflow ui --backend-store-uri {settings.mlflow_uri} --port 5000",
            f"  re-run the DAG   AIRFLOW_HOME={REPO_ROOT} {venv}/airflow dags test inbo_nightly {end:%Y-%m-%d}",
        ]
    )
