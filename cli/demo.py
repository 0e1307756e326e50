"""`inbo demo`: a demo world, the nightly and one hourly run through Airflow, and what they published.

Airflow runs as it does in production: its own api-server, scheduler and DAG processor (`cli.airflow`),
the runs triggered through the REST API and followed task by task; so their durations and task
logs in the UI are the real ones. This module never imports Airflow.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.airflow import DEFAULT_PORT, AirflowApi, airflow_services, follow_run, free_port
from cli.app import app, console, err, interval_end
from cli.operations import reconcile
from cli.pipeline import simulate
from cli.serving import recs, status
from inbo.errors import InboError
from inbo.settings import Settings, get_settings

PANEL = "Demo"
MANUAL_RUNS_ONLY = {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
"""The demo's scheduler runs the demo's runs only, none of the schedules' own."""


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
        date=end,
        hours_after=1,
    )
    redis_url = ensure_redis(settings)
    hour = end + timedelta(hours=1)
    err.print("starting Airflow (api-server, scheduler, dag-processor) ...")
    with airflow_services(settings, free_port(), extra_env=MANUAL_RUNS_ONLY) as api:
        run_dag(api, "inbo_nightly", end, settings)
        console.print(run_summary(settings, end))
        for user_id in sample_users(3, settings):
            recs(user_id, as_json=False, limit=5)
        console.print()
        run_dag(api, "inbo_hourly", hour, settings)
    status()
    console.print(
        f"(the demo replays the hour to {hour:%H:%M} UTC today, so freshness also counts the time "
        "since then; `inbo bench-hourly` times a refresh on its own)"
    )
    reconcile(repair=False, restore=None, yes=False, at=hour)
    console.print(f"\ndemo finished in {time.monotonic() - started:.0f} s\n")
    print(next_steps(redis_url, end, settings))


def run_dag(api: AirflowApi, dag_id: str, end: datetime, settings: Settings) -> None:
    """Trigger `dag_id` for the batch ending at `end` and follow it until it finishes."""
    err.print(f"running {dag_id} for the interval ending {end:%Y-%m-%d %H:%M} UTC ...")
    run_id = api.run_dag(dag_id, end)
    if follow_run(api, dag_id, run_id) != "success":
        logs = settings.var_dir / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        raise InboError(f"{dag_id} failed; task logs in {logs}")
    console.print(f"[green]{dag_id} succeeded[/green]")


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
    dashboard = settings.reports_dir / "dashboard" / "index.html"
    return "\n".join(
        [
            "Where to look next:",
            f"  recommendations  {venv}/inbo recs <USER_ID>",
            f"  health           {venv}/inbo health   (exit 0 ok, 1 degraded, 2 down)",
            f"  metrics          {venv}/inbo exporter (http://localhost:{settings.exporter_port}"
            "/metrics, /healthz, /readyz)",
            "  alert rules      monitoring/alerts.yml (prometheus --config.file=monitoring/prometheus.yml)",
            "  Airflow alerts   set INBO_ALERT_WEBHOOK_URL (Slack-compatible) before `inbo airflow`",
            "  anomalies        inbo_anomaly_active on /metrics; README, Anomaly detection",
            *([f"  dashboard        {dashboard}"] if dashboard.exists() else []),
            f"  redis-cli        {redis_cli_example(redis_url, settings.redis_prefix)}",
            f"  Airflow UI       {venv}/inbo airflow   (http://localhost:{DEFAULT_PORT}, no login)",
            f"  MLflow UI        {venv}/mlflow ui --backend-store-uri {settings.mlflow_uri} --port 5000",
            f"  re-run the DAG   Trigger inbo_nightly in the Airflow UI, logical date {end:%Y-%m-%d}",
        ]
    )
