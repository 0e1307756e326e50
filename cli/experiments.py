"""`inbo experiment list|start|stop|report`: the experiments in `experiments.yml`, their state and
readouts."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.app import AT_FORMATS, JsonOption, app, console, print_json

experiment_app = typer.Typer(
    help="A/B experiments: list, start, stop, report (docs/experiments.md)."
)
app.add_typer(experiment_app, name="experiment", rich_help_panel="Experiments")

NameArgument = Annotated[str, typer.Argument(help="The experiment's name in experiments.yml.")]
WhenOption = Annotated[
    datetime | None,
    typer.Option("--at", formats=AT_FORMATS, help="When it starts or stops (UTC). Default: now."),
]


@experiment_app.command("list")
def list_experiments(as_json: JsonOption = False) -> None:
    """Every experiment of the file with its state: draft (never started), running, stopped."""
    from inbo.lake import Lake
    from inbo.settings import get_settings
    from pipelines.experiments.lifecycle import experiments_config, read_states

    settings = get_settings()
    config = experiments_config(settings)
    states = read_states(Lake(settings.lake))
    rows: list[dict[str, Any]] = [
        {
            "name": e.name,
            "layer": e.layer,
            "variants": {v.name: v.policy.key for v in e.variants},
            "status": states[e.name].status if e.name in states else "draft",
            "started_at": states[e.name].started_at if e.name in states else None,
            "stopped_at": states[e.name].stopped_at if e.name in states else None,
        }
        for e in config.experiments
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("experiment", "layer", "variants", "status", "started", "stopped")
    for row in rows:
        variants = ", ".join(f"{name}: {policy}" for name, policy in row["variants"].items())
        table.add_row(
            str(row["name"]), str(row["layer"]), variants, str(row["status"]),
            str(row["started_at"] or ""), str(row["stopped_at"] or ""),
        )  # fmt: skip
    console.print(table)


@experiment_app.command("start")
def start(name: NameArgument, at: WhenOption = None, as_json: JsonOption = False) -> None:
    """Check the experiment's power over its planned length, then serve it from the next nightly.

    Refused when the users of the last planned length could not show its minimum detectable
    effect, or when a running experiment holds its buckets."""
    from inbo.settings import get_settings
    from pipelines.experiments.lifecycle import experiments_config, start_experiment
    from pipelines.experiments.power import power_check

    settings = get_settings()
    moment = _utc(at)
    power = power_check(experiments_config(settings).get(name), moment, settings)
    state = start_experiment(name, moment, power, settings)
    if as_json:
        print_json(asdict(state))
        return
    console.print(
        f"{name} runs from {state.started_at} UTC (the next nightly serves it): "
        f"~{power['users_expected']:,} users, detects {power['detectable_lift']:.1%} "
        f"at power {power['power']:.0%}"
    )


@experiment_app.command("stop")
def stop(name: NameArgument, at: WhenOption = None, as_json: JsonOption = False) -> None:
    """Stop serving the experiment: from the next nightly its users get the champion again."""
    from inbo.settings import get_settings
    from pipelines.experiments.lifecycle import stop_experiment

    state = stop_experiment(name, _utc(at), get_settings())
    if as_json:
        print_json(asdict(state))
        return
    console.print(f"{name} stopped at {state.stopped_at} UTC")


@experiment_app.command("report")
def report(
    name: NameArgument,
    at: Annotated[
        datetime | None,
        typer.Option(
            "--at",
            formats=AT_FORMATS,
            help="Read out the events before this time (UTC). Default: now.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Analyse the experiment now: sample-ratio check, every metric per variant, the verdicts;
    writes the lake's results, an MLflow run and the HTML report, and prints its path."""
    from pipelines.experiments.readouts import report_experiment
    from pipelines.experiments.report import p_value

    done = report_experiment(name, _utc(at))
    readout = done.readout
    if as_json:
        print_json(
            {
                "experiment": name,
                "window": [readout.window_start.isoformat(), readout.window_end.isoformat()],
                "users": readout.users,
                "impressions": readout.impressions,
                "sample_ratio": asdict(readout.ratio),
                "verdicts": readout.verdicts,
                "results": [asdict(r) for r in readout.results],
                "report": str(done.report),
                "lake_file": done.results,
                "mlflow_run": done.mlflow_run,
            }
        )
        return
    srm = readout.ratio
    console.print(
        f"{name}: {', '.join(f'{v} {n:,}' for v, n in readout.users.items())} exposed users; "
        f"sample ratio p = {srm.pvalue:.3g}"
        + (" [red]MISMATCH: verdicts withheld[/red]" if srm.mismatch else "")
    )
    table = Table("metric", "variant", "control", "treatment", "lift [95% CI]", "p", "CUPED cut")
    for r in readout.results:
        table.add_row(
            f"{r.metric} ({r.role})", r.treatment, f"{r.control_value:.4g}", f"{r.treatment_value:.4g}",
            f"{r.rel_effect:+.1%} [{r.rel_effect_ci[0]:+.1%}, {r.rel_effect_ci[1]:+.1%}]",
            p_value(r.pvalue), f"{r.variance_reduction:.0%}",
        )  # fmt: skip
    if readout.results:
        console.print(table)
    for variant, verdict in readout.verdicts.items():
        console.print(f"{variant}: {verdict}")
    console.print(f"report: {done.report}")


def _utc(at: datetime | None) -> datetime:
    """`--at` as an aware UTC time (a naive one is UTC already), else now."""
    if at is None:
        return datetime.now(UTC).replace(microsecond=0)
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
