"""`inbo` commands that run one step of the pipeline: the same functions the DAG tasks call."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from cli.app import (
    AtOption,
    DateOption,
    JsonOption,
    app,
    console,
    err,
    hour_end,
    interval_end,
    print_json,
)

PANEL = "Pipeline steps"


@app.command(rich_help_panel=PANEL)
def simulate(
    users: Annotated[int, typer.Option(min=1, help="Number of users.")] = 2000,
    items: Annotated[int, typer.Option(min=5, help="Number of newsletter issues.")] = 500,
    days: Annotated[int, typer.Option(min=1, help="Days of app activity.")] = 14,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same world.")] = 7,
    dirty_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.5, help="Share of interactions broken on purpose, for the quarantine."
        ),
    ] = 0.001,
    counter_drift: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.5,
            help="Share of the app's Redis counter increments lost or doubled, for `inbo reconcile`.",
        ),
    ] = 0.0002,
    date: DateOption = None,
    hours_after: Annotated[
        int,
        typer.Option(
            min=0,
            max=23,
            help="Keep the app running this many hours past --date (for hourly runs).",
        ),
    ] = 0,
    incident: Annotated[
        list[str] | None,
        typer.Option(
            "--incident",
            metavar="KIND@START[+DURATION]",
            help="Inject an incident (repeatable): click-outage (80% of clicks lost, default 1 h), "
            "bot-burst (one user, 3000 impressions, default 5 min) or broken-feed (no new issues, "
            "default to the end), from START (UTC), e.g. click-outage@2026-11-20T14:00+30m.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate a demo world into the app database and the app's counters (replaces what is there)."""
    from rich.progress import Progress

    from inbo.settings import get_settings
    from pipelines.app.counters import open_counters
    from pipelines.demo.incidents import Incident
    from pipelines.demo.simulate import simulate as run_simulation

    try:
        incidents = [Incident.parse(spec) for spec in incident or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--incident") from None
    settings = get_settings()
    end = interval_end(date)
    with open_counters(settings) as counters, Progress(console=err, transient=True) as progress:
        task = progress.add_task("simulating days", total=days)
        summary = run_simulation(
            settings.app_db,
            users=users,
            items=items,
            days=days,
            seed=seed,
            end=(end + timedelta(hours=hours_after)).replace(tzinfo=None),
            truth_dir=settings.var_dir / "simulation",
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            dirty_share=dirty_share,
            counters=counters,
            counter_drift=counter_drift,
            incidents=incidents,
        )
    if as_json:
        print_json(summary)
        return
    console.print(
        f"simulated {summary.users:,} users, {summary.newsletter_issues:,} issues, "
        f"{summary.experience_interactions:,} interactions and {summary.reading_progress:,} "
        f"reading-progress rows over {days} days into {settings.app_db}"
    )


@app.command(rich_help_panel=PANEL)
def ingest(date: DateOption = None, as_json: JsonOption = False) -> None:
    """Extract the batch from the app database and stage canonical tables."""
    from pipelines.ingest import ingest_exclusive

    report = ingest_exclusive(interval_end(date))
    if as_json:
        print(report.to_json())
        return
    console.print(
        f"ingested batch {report.batch} from {report.source}: extracted {counts(report.extracted)}; "
        f"quarantined {counts(report.quarantined) or 'none'}"
    )


def counts(by_table: dict[str, int]) -> str:
    """`table=1,234, ...` for the tables with a count above zero."""
    return ", ".join(f"{name}={count:,}" for name, count in by_table.items() if count)


@app.command(rich_help_panel=PANEL)
def validate(
    date: DateOption = None,
    accept: Annotated[
        str | None,
        typer.Option(
            "--accept",
            metavar="BATCH",
            help="Publish the held batch BATCH (e.g. 20261126T0000Z) as it is, instead of "
            "validating: an operator's decision, logged and recorded in its report.",
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Who accepts, for the record (with --accept). Default: you."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the Great Expectations suites on the staged batch; quarantine what fails, and hold
    the batch out of the lake when too much does (until it passes or is accepted)."""
    if accept is not None:
        if date is not None:
            raise typer.BadParameter(
                "--accept names its batch; leave --date out", param_hint="--date"
            )
        accept_held(accept, by or _operator(), as_json)
        return
    if by is not None:
        raise typer.BadParameter("only with --accept", param_hint="--by")
    from pipelines.validate import validate_exclusive

    report = validate_exclusive(interval_end(date))
    if as_json:
        print(report.to_json())
        return
    console.print(
        f"validated batch {report.batch}: {report.status}; passed {counts(report.passed)}; "
        f"quarantined {counts(report.quarantined) or 'none'}"
    )
    for table, page in report.data_docs.items():
        console.print(f"Data Docs ({table}): {page}")


def accept_held(batch: str, by: str, as_json: bool) -> None:
    """`inbo validate --accept BATCH`: publish a held batch, or say why there is nothing to do."""
    from datetime import UTC, datetime

    from inbo.lake import batch_end
    from pipelines.validate import ACCEPTED, accept_exclusive

    try:
        batch_end(batch)
    except ValueError:
        raise typer.BadParameter(
            f"{batch!r} is not a batch key like 20261126T0000Z", param_hint="--accept"
        ) from None
    started = datetime.now(UTC).isoformat()
    report = accept_exclusive(batch, by)
    if as_json:
        print(report.to_json())
        return
    if report.status != ACCEPTED:
        console.print(f"batch {batch} passed validation: nothing to accept")
    elif report.accepted_at is not None and report.accepted_at >= started:
        console.print(f"batch {batch} accepted by {by} at {report.accepted_at}: published")
    else:
        console.print(
            f"batch {batch} was accepted by {report.accepted_by} at {report.accepted_at}: "
            "nothing to do"
        )


def _operator() -> str:
    """The OS user running the command, for the acceptance record."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@app.command(rich_help_panel=PANEL)
def features(date: DateOption = None, as_json: JsonOption = False) -> None:
    """Build the batch's interaction and continue-reading tables."""
    from features.interactions import build_interactions

    built = build_interactions(interval_end(date))
    if as_json:
        print_json(built)
        return
    console.print(
        f"batch {built.batch}: {built.pairs:,} user-item pairs from {built.events:,} events "
        f"({built.duplicates:,} duplicates dropped), {built.users:,} users, {built.items:,} items, "
        f"{built.continue_reading:,} continue-reading rows"
    )


@app.command(rich_help_panel=PANEL)
def embed(date: DateOption = None, as_json: JsonOption = False) -> None:
    """Encode new or changed issues with MiniLM (cached by content hash)."""
    from features.embeddings import build_embeddings

    built = build_embeddings(interval_end(date))
    if as_json:
        print_json(built)
        return
    console.print(
        f"batch {built.batch}: {built.items:,} issues, {built.encoded:,} encoded with {built.model}, "
        f"{built.reused:,} reused from the cache, in {built.seconds:.1f} s"
    )


@app.command(rich_help_panel=PANEL)
def train(date: DateOption = None, as_json: JsonOption = False) -> None:
    """Fit the batch's models (baselines, content, ALS, reranker) and log them to MLflow."""
    from pipelines.train import train_all

    trained = train_all(interval_end(date))
    if as_json:
        print_json(trained)
        return
    for run in trained:
        console.print(f"batch {run.batch}: MLflow run {run.run_id}, models in {run.directory}")


@app.command(rich_help_panel=PANEL)
def gate(date: DateOption = None, as_json: JsonOption = False) -> None:
    """Evaluate challenger and champion on the held-out window, register, promote if not worse."""
    from pipelines.promotion import gate_batch

    decisions = gate_batch(interval_end(date))
    if as_json:
        print_json(decisions)
        return
    for kind, decision in decisions.items():
        verdict = "promoted" if decision.promoted else "kept the champion"
        console.print(f"{kind}: version {decision.challenger} {verdict} ({decision.reason})")


@app.command(rich_help_panel=PANEL)
def score(date: DateOption = None, as_json: JsonOption = False) -> None:
    """Write every user's top-N and the fallback list to the lake."""
    from pipelines.score import score_users

    scored = score_users(interval_end(date))
    if as_json:
        print_json(scored)
        return
    console.print(
        f"batch {scored.batch}: {scored.rows:,} rows for {scored.users:,} users in "
        f"{scored.shards} shards, fallback of {scored.fallback_items} items; models: "
        + ", ".join(f"{kind} {name}" for kind, name in scored.models.items())
    )


@app.command(rich_help_panel=PANEL)
def publish(date: DateOption = None, as_json: JsonOption = False) -> None:
    """Stage the batch's table in Redis, verify it, then switch readers to it."""
    from pipelines.publish.steps import publish_table

    published = publish_table(interval_end(date))
    if as_json:
        print_json(published)
        return
    console.print(
        f"live table version: {published.version} (previous: {published.previous or 'none'})"
    )


@app.command(rich_help_panel=PANEL)
def refresh(
    at: AtOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the hourly refresh in this process: the steps of the inbo_hourly DAG, in order."""
    from pipelines.hourly import refresh as run_refresh

    run = run_refresh(hour_end(at))
    if as_json:
        print_json(run)
        return
    for step, seconds in run.step_seconds.items():
        console.print(f"step {step} {seconds:.2f} s")
    scored, report = run.score, run.publish
    console.print(
        f"refresh {report.batch}: {report.status}; {scored.active_users:,} active users, "
        f"{report.users:,} rows and {report.similar_items:,} new similar lists written, "
        f"{scored.new_items:,} new issues indexed, in {sum(run.step_seconds.values()):.1f} s"
    )
    if report.freshness_seconds is not None:
        console.print(f"newest event to live: {report.freshness_seconds:,.1f} s")
