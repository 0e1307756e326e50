"""`inbo play`: the closed loop. The demo world plays day after day against what the platform
publishes, and the DAGs run through Airflow between the days, as in production.

History first (the simulator choosing the lists), its nightly, then per day: the app's feed shows
the live table (pointer read, user key, fallback), an hourly refresh at each `--hourly-at` hour,
and `inbo_nightly` at midnight. With `--experiment`, the experiment starts at the end of the
history (after its power check) so the first nightly serves it, and `inbo_experiments` analyses
it after every nightly. This module never imports Airflow.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.airflow import airflow_services, free_port
from cli.app import DateOption, app, console, err, interval_end
from cli.demo import MANUAL_RUNS_ONLY, run_dag

if TYPE_CHECKING:
    from inbo.settings import Settings
    from pipelines.demo.closed_loop import ClosedLoop
    from pipelines.experiments.config import Experiment

PANEL = "Demo"


@app.command(rich_help_panel=PANEL)
def play(
    days: Annotated[int, typer.Option(min=1, max=60, help="Days to play against the tables.")] = 7,
    users: Annotated[int, typer.Option(min=10, help="Users in the world.")] = 20_000,
    items: Annotated[
        int, typer.Option(min=10, help="Newsletter issues over the whole world.")
    ] = 3000,
    history_days: Annotated[
        int, typer.Option(min=2, help="Days of app activity before the first nightly.")
    ] = 14,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same world, same play.")] = 7,
    experiment: Annotated[
        list[str] | None,
        typer.Option(
            "--experiment",
            help="Start this experiment of experiments.yml before the first nightly (repeatable).",
        ),
    ] = None,
    hourly_at: Annotated[
        list[int] | None,
        typer.Option(
            "--hourly-at",
            min=1,
            max=23,
            help="Run inbo_hourly at this hour of each day (repeatable).",
        ),
    ] = None,
    date: DateOption = None,
) -> None:
    """Play the demo world against the published tables up to --date (default today), running
    the DAGs in between: history until --days before it, then the played days."""
    from inbo.services import ensure_redis, redis_client
    from inbo.settings import get_settings
    from pipelines.demo.closed_loop import ClosedLoop, TableFeed, write_play_record
    from pipelines.experiments.lifecycle import experiments_config

    started = time.monotonic()
    settings = get_settings()
    # an unknown name fails now, not after the history is simulated
    chosen = [experiments_config(settings).get(name) for name in experiment or []]
    pauses = sorted(set(hourly_at or []))
    end = interval_end(date) - timedelta(days=days)  # Airflow runs no interval that has not ended
    err.print(f"simulating {history_days} days of history for {users:,} users ...")
    loop = ClosedLoop.begin(
        settings.app_db,
        users=users,
        items=items,
        history_days=history_days,
        days=days,
        seed=seed,
        end=end,
        truth_dir=settings.var_dir / "simulation",
        dirty_share=0.001,
    )
    if chosen:
        _start_experiments(chosen, end, settings)
    ensure_redis(settings)
    feed = TableFeed(redis_client(settings), settings.redis_prefix)
    err.print("starting Airflow (api-server, scheduler, dag-processor) ...")
    with airflow_services(settings, free_port(), extra_env=MANUAL_RUNS_ONLY) as api:

        def run(dag_id: str, moment: datetime) -> None:
            run_dag(api, dag_id, moment, settings)
            if chosen:  # the readout DAG's own schedule: hourly while young, else nightly
                run_dag(api, "inbo_experiments", moment, settings)

        run("inbo_nightly", end)
        while not loop.done:
            day = loop.play_day(
                feed,
                pauses=pauses,
                on_pause=lambda moment: run("inbo_hourly", moment),
            )
            console.print(
                f"played {day.day:%Y-%m-%d}: {day.interactions:,} interactions, "
                f"{day.table_impressions:,} slots from the live table"
            )
            run("inbo_nightly", (day.day + timedelta(days=1)).replace(tzinfo=end.tzinfo))
    seconds = round(time.monotonic() - started)
    write_play_record(
        settings.var_dir / "simulation",
        {
            "days": days, "users": users, "items": items, "history_days": history_days,
            "seed": seed, "experiments": [e.name for e in chosen], "hourly_at": pauses,
            "seconds": seconds,
        },
    )  # fmt: skip
    console.print(_played_table(loop))
    if chosen:
        console.print("reports: " + ", ".join(f"inbo experiment report {e.name}" for e in chosen))
    console.print(f"\nplayed {days} days in {seconds} s")


def _start_experiments(experiments: list[Experiment], at: datetime, settings: Settings) -> None:
    """Ingest and validate the history (the power check reads its events), then start each
    experiment at its end; the first nightly re-runs the same batch to the same tables."""
    from pipelines.experiments.lifecycle import start_experiment
    from pipelines.experiments.power import power_check
    from pipelines.ingest import ingest_exclusive
    from pipelines.validate import validate_exclusive

    ingest_exclusive(at, settings)
    validate_exclusive(at, settings)
    for experiment in experiments:
        power = power_check(experiment, at, settings)
        start_experiment(experiment.name, at, power, settings)
        console.print(
            f"{experiment.name} starts at {at:%Y-%m-%d %H:%M} UTC: ~{power['users_expected']:,} users, "
            f"detects {power['detectable_lift']:.1%} at power {power['power']:.0%}"
        )


def _played_table(loop: ClosedLoop) -> Table:
    table = Table("day", "interactions", "reading progress", "table slots shown")
    for day in loop.played:
        table.add_row(
            f"{day.day:%Y-%m-%d}", f"{day.interactions:,}", f"{day.reading_progress:,}",
            f"{day.table_impressions:,}",
        )  # fmt: skip
    return table
