"""`inbo`: run any step of the platform from a terminal, the same functions the DAGs call.

Heavy libraries are imported inside each command so `inbo --help` answers at once. A user error
(bad config, unknown user, Redis unreachable, ...) prints one line and exits non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from inbo import logs
from inbo.errors import InboError, UnknownUser
from inbo.settings import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    from pipelines.publish import UserRecs
    from pipelines.reconcile import ReconcileReport

app = typer.Typer(
    help="INBO Recs: build and publish newsletter recommendations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)

DateOption = Annotated[
    str | None,
    typer.Option(
        "--date",
        help="End of the batch's data interval (YYYY-MM-DD, midnight UTC). Default: today.",
    ),
]


def interval_end(date: str | None) -> datetime:
    """The batch end for `--date`, midnight UTC; today's midnight when not given."""
    if date is None:
        now = datetime.now(UTC)
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    try:
        return datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise typer.BadParameter(
            f"{date!r} is not a date like 2026-11-26", param_hint="--date"
        ) from None


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logs.configure(verbose)


@app.command()
def services(
    stop: Annotated[bool, typer.Option(help="Stop the embedded Redis server.")] = False,
) -> None:
    """Start (or reuse) the embedded services and print where everything is."""
    from inbo.services import ensure_redis, service_status, stop_redis

    settings = get_settings()
    if stop:
        stopped = stop_redis(settings)
        console.print("embedded Redis stopped" if stopped else "no embedded Redis was running")
        return
    ensure_redis(settings)
    status = service_status(settings)
    table = Table(title="INBO services", show_header=False)
    for key, value in _flatten(status).items():
        table.add_row(key, str(value))
    table.add_row("lake", settings.lake)
    table.add_row("airflow home", str(REPO_ROOT))
    console.print(table)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@app.command()
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
) -> None:
    """Generate a demo world into the app database and the app's counters (replaces what is there)."""
    from rich.progress import Progress

    from pipelines.app_counters import open_counters
    from pipelines.simulate import simulate as run_simulation

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
        )
    console.print(
        f"simulated {summary.users:,} users, {summary.newsletter_issues:,} issues, "
        f"{summary.experience_interactions:,} interactions and {summary.reading_progress:,} "
        f"reading-progress rows over {days} days into {settings.app_db}"
    )


@app.command()
def ingest(date: DateOption = None) -> None:
    """Extract the batch from the app database and stage canonical tables."""
    from pipelines.ingest import ingest_exclusive as run_ingest

    report = run_ingest(interval_end(date))
    console.print_json(report.to_json())


@app.command()
def validate(date: DateOption = None) -> None:
    """Run the Great Expectations suites on the staged batch; quarantine what fails."""
    from pipelines.validate import validate_exclusive

    report = validate_exclusive(interval_end(date))
    console.print_json(report.to_json())
    for table, page in report.data_docs.items():
        console.print(f"Data Docs ({table}): {page}")


@app.command()
def features(date: DateOption = None) -> None:
    """Build the batch's interaction and continue-reading tables."""
    from features.interactions import build_interactions

    console.print(build_interactions(interval_end(date)))


@app.command()
def embed(date: DateOption = None) -> None:
    """Encode new or changed issues with MiniLM (cached by content hash)."""
    from features.embeddings import build_embeddings

    console.print(build_embeddings(interval_end(date)))


@app.command()
def train(date: DateOption = None) -> None:
    """Fit the batch's models (baselines, content, ALS, reranker) and log them to MLflow."""
    from pipelines.train import fit_als, fit_baselines, fit_reranker

    end = interval_end(date)
    for step in (fit_baselines, fit_als, fit_reranker):
        console.print(step(end))


@app.command()
def gate(date: DateOption = None) -> None:
    """Evaluate challenger and champion on the held-out window, register, promote if not worse."""
    from pipelines.promotion import evaluate_batch, register_and_gate
    from pipelines.tracking import connect

    end = interval_end(date)
    scores = evaluate_batch(end)
    runs = _batch_runs(connect(get_settings()), end)
    for kind, decision in register_and_gate(end, runs["als"], runs["reranker"], scores).items():
        verdict = "promoted" if decision["promoted"] else "kept the champion"
        console.print(f"{kind}: version {decision['challenger']} {verdict} ({decision['reason']})")


def _batch_runs(client: Any, end: datetime) -> dict[str, str]:
    """The MLflow runs `inbo train` logged for the batch, by step."""
    from inbo.lake import batch_key
    from pipelines.tracking import EXPERIMENT

    experiment = client.get_experiment_by_name(EXPERIMENT)
    batch = batch_key(end)
    runs = {}
    for step in ("als", "reranker"):
        found = client.search_runs(
            [experiment.experiment_id] if experiment else [],
            f"tags.step = '{step}' and tags.batch = '{batch}'",
            max_results=1,
        )
        if not found:
            raise InboError(f"no {step} run for batch {batch}: run `inbo train --date` first")
        runs[step] = found[0].info.run_id
    return runs


@app.command()
def evaluate(
    dataset: Annotated[
        str, typer.Option(help="demo (the lake's newest batch), movielens-100k, or mind.")
    ] = "demo",
    path: Annotated[
        Path | None, typer.Option(help="Folder of the dataset (movielens, mind).")
    ] = None,
    k: Annotated[int, typer.Option(min=1)] = 10,
) -> None:
    """Offline evaluation: popularity, content, ALS and ALS + reranker, one table, logged to MLflow."""
    from pipelines.benchmark import format_table, run_benchmark

    print(format_table(run_benchmark(dataset, path, k=k)))


@app.command("bench-hourly")
def bench_hourly(
    users: Annotated[int, typer.Option(min=100, help="Users in the bench world.")] = 200_000,
    items: Annotated[int, typer.Option(min=10, help="Newsletter issues.")] = 5_000,
    days: Annotated[int, typer.Option(min=2, help="Days of traffic before the timed hour.")] = 3,
) -> None:
    """Time one hourly refresh over a busy hour after a nightly run (world built once, reused)."""
    from pipelines.hourly_bench import as_json, format_result, run_hourly_bench

    settings = get_settings()
    result = run_hourly_bench(settings, users, items, days)
    print(format_result(result))
    out = settings.reports_dir / "bench-hourly.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(as_json(result))
    console.print(f"written to {out}")


@app.command()
def bench(
    users: Annotated[int, typer.Option(min=100, help="Users in the bench world.")] = 100_000,
    items: Annotated[int, typer.Option(min=100, help="Newsletter issues.")] = 50_000,
    days: Annotated[int, typer.Option(min=2, help="Days of events.")] = 30,
    shards: Annotated[int, typer.Option(min=1, max=999, help="User shards.")] = 8,
    per_source: Annotated[
        int, typer.Option(min=1, help="Candidates per source (INBO_CANDIDATES_PER_SOURCE).")
    ] = 100,
    activity: Annotated[
        float, typer.Option(min=0.001, help="Sessions per user and day, relative to the demo.")
    ] = 0.085,
    parallel: Annotated[int, typer.Option(min=1, help="Score shard tasks at a time.")] = 2,
    publish_parallel: Annotated[
        int, typer.Option(min=1, help="Publish shard tasks at a time (INBO_PUBLISH_PARALLEL).")
    ] = 1,
    label_days: Annotated[
        float, typer.Option(min=0.1, help="Days of impressions the reranker learns from.")
    ] = 2.0,
    evaluate: Annotated[
        bool, typer.Option(help="Run the held-out evaluation and gate (else: promote directly).")
    ] = True,
    write: Annotated[bool, typer.Option(help="Update docs/benchmarks.md.")] = True,
) -> None:
    """Time the nightly pipeline on a large world: stage wall times, peak RSS, publish, reads.

    The world is simulated once under <var>/bench/ and reused; simulation and the previous
    nights' warm-up are not timed. Each step runs in its own process.
    """
    from pipelines.scale_bench import BenchParams, format_report, run_bench, write_doc

    params = BenchParams(
        users=users,
        items=items,
        days=days,
        shards=shards,
        activity=activity,
        per_source=per_source,
        parallel=parallel,
        publish_parallel=publish_parallel,
        evaluate=evaluate,
        label_days=label_days,
    )
    report = run_bench(params)
    print(format_report(report))
    if write:
        write_doc(report)


@app.command()
def models() -> None:
    """Registered model versions with their aliases (champion, challenger)."""
    from pipelines.registry import list_models

    table = Table("model", "version", "aliases", "batch", "run")
    for row in list_models(get_settings()):
        table.add_row(
            row["model"], str(row["version"]), row["aliases"], row["batch"], row["run_id"]
        )
    console.print(table)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="als, reranker or popularity")],
    version: Annotated[int, typer.Argument(help="Registered version to make champion.")],
) -> None:
    """Point the `champion` alias at a version; the next publish uses it."""
    from mlflow.exceptions import MlflowException

    from pipelines.registry import promote as set_champion
    from pipelines.registry import registered_name

    try:
        set_champion(get_settings(), model, version)
    except MlflowException:
        raise InboError(
            f"{registered_name(model)} has no version {version}; see `inbo models`"
        ) from None
    console.print(f"{registered_name(model)} version {version} is now champion")


@app.command()
def explain(
    user_id: Annotated[int, typer.Argument()],
    item_id: Annotated[int, typer.Argument()],
    date: DateOption = None,
) -> None:
    """The reranker's per-feature contributions for one user and issue."""
    from pipelines.explain import explain_item

    found = explain_item(user_id, item_id, interval_end(date))
    console.print(
        f"user {found.user_id}, item {found.item_id}: score {found.score:.4f}, "
        f"proposed by {found.proposed_by}; reason: {found.reason}"
    )
    table = Table("feature", "value", "contribution")
    for name, row in found.contributions.iterrows():
        table.add_row(str(name), f"{row['value']:.4g}", f"{row['contribution']:+.4f}")
    console.print(table)


@app.command()
def similar(item_id: Annotated[int, typer.Argument()]) -> None:
    """An issue's "more like this" list from the live Redis table."""
    from pipelines.publish import read_similar

    found = read_similar(item_id)
    if not found:
        raise InboError(f"item {item_id} has no 'more like this' row in the live table")
    titles = _titles()
    table = Table(
        "rank", "item", "score", "title", title=f"more like {item_id}: {titles.get(item_id, '')}"
    )
    for entry in found["items"]:
        table.add_row(
            str(entry["rank"]),
            str(entry["item_id"]),
            f"{entry['score']:.3f}",
            titles.get(entry["item_id"], ""),
        )
    console.print(table)


@app.command()
def score(date: DateOption = None) -> None:
    """Write every user's top-N and the fallback list to the lake."""
    from pipelines.recommend import score_users

    console.print(score_users(interval_end(date)))


@app.command()
def publish(date: DateOption = None) -> None:
    """Stage the batch's table in Redis, verify it, then switch readers to it."""
    from pipelines.publish import activate_version, publish_batch, verify_batch

    end = interval_end(date)
    version = publish_batch(end)
    verify_batch(end, version)
    previous = activate_version(version)
    console.print(f"live table version: {version} (previous: {previous or 'none'})")


@app.command()
def rollback(
    to: Annotated[
        str | None, typer.Option(help="Version to switch to. Default: the previous one.")
    ] = None,
    list_versions: Annotated[
        bool, typer.Option("--list", help="List the versions kept in Redis.")
    ] = False,
) -> None:
    """Switch readers back to an earlier table version."""
    from pipelines.publish import rollback_table, table_versions

    if list_versions:
        table = Table("version", "created at", "status", "users", "live")
        for row in table_versions():
            table.add_row(
                row["version"],
                str(row.get("created_at")),
                str(row.get("status")),
                str(row.get("users")),
                "yes" if row.get("live") else "",
            )
        console.print(table)
        return
    before, after = rollback_table(to)
    console.print(f"rolled back: {before} -> {after}")


@app.command()
def recs(
    user_id: Annotated[int, typer.Argument(help="The user to read recommendations for.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw payload.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show (the payload keeps all).")] = 10,
) -> None:
    """Read a user's recommendations from Redis, exactly as a frontend does."""
    from pipelines.publish import read_recs

    catalogue = _catalogue()
    result = read_recs(user_id, catalogue=catalogue)
    if not result["personal"] and user_id not in _latest_snapshot("users", "user_id").index:
        raise UnknownUser(
            f"unknown user {user_id}: not in the users table (apps would show the fallback list)"
        )
    if as_json:
        console.print_json(json.dumps(result["payload"]))
        return
    console.print(_recs_table(result, catalogue, limit))


def _latest_snapshot(table: str, *columns: str) -> Any:
    """Columns of the lake's newest snapshot of a dimension table (empty if there is none)."""
    import pandas as pd

    from inbo.lake import Lake

    lake = Lake(get_settings().lake)
    snapshots = lake.files(table)
    if not snapshots:
        return pd.DataFrame(columns=list(columns)).set_index(columns[0])
    frame = lake.read_files(snapshots[-1:])[list(columns)]
    return frame.set_index(columns[0])


def _titles() -> dict[int, str]:
    """Item titles for display only: the published payload carries ids, apps have the titles."""
    return dict(_latest_snapshot("items", "item_id", "title")["title"])


def _catalogue() -> dict[int, dict[str, str]]:
    """The newest items snapshot as the catalogue reason texts are rendered with, as apps do."""
    from pipelines.publish import catalogue_of

    columns = ("item_id", "title", "publisher", "category")
    return catalogue_of(_latest_snapshot("items", *columns).reset_index())


def _recs_table(result: UserRecs, catalogue: dict[int, dict[str, str]], limit: int) -> Table:
    kind = "personal" if result["personal"] else "fallback (no personal row)"
    table = Table(title=f"user {result['user_id']}: {kind}, table {result['table_version']}")
    for column in ("rank", "item", "source"):
        table.add_column(column, no_wrap=True, justify="right" if column != "source" else "left")
    table.add_column("title", no_wrap=True, overflow="ellipsis", max_width=32)
    table.add_column("why")
    for item in result["items"][:limit]:
        title = catalogue.get(item["item_id"], {}).get("title", "")
        table.add_row(
            str(item["rank"]), str(item["item_id"]), item["source"], title, item["reason"] or ""
        )
    return table


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=10)] = 2000,
    items: Annotated[int, typer.Option(min=10)] = 500,
    days: Annotated[int, typer.Option(min=2)] = 14,
    seed: int = 7,
) -> None:
    """Generate a demo world, run the nightly DAG and then one hourly run through Airflow, show
    what they published and how the app's counters reconcile."""
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
    from inbo.services import ensure_redis

    redis_url = ensure_redis(settings)
    log_path = run_airflow_dag("inbo_nightly", end, settings)
    console.print(f"[green]inbo_nightly succeeded[/green] (Airflow log: {log_path})")
    _print_run_summary(settings, end)
    from pipelines.publish import sample_users

    for user_id in sample_users(3):
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
    print(_next_steps(redis_url, end))


AtOption = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="End of the interval (UTC, e.g. 2026-11-26T14:00). Default: the latest tick of "
        "INBO_HOURLY_SCHEDULE.",
    ),
]


def hour_end(at: str | None) -> datetime:
    """The interval end for `--at` (UTC); by default the latest tick of `INBO_HOURLY_SCHEDULE`."""
    if at is None:
        from croniter import croniter

        now = datetime.now(UTC)
        latest: datetime = croniter(get_settings().hourly_schedule, now).get_prev(datetime)
        return latest
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise typer.BadParameter(
            f"{at!r} is not a time like 2026-11-26T14:00", param_hint="--at"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@app.command()
def refresh(at: AtOption = None) -> None:
    """Run the hourly refresh in this process: the steps of the inbo_hourly DAG, in order."""
    from features.activity import build_activity
    from features.embeddings import embed_new_items
    from pipelines.hourly import publish_active_users, score_active_users
    from pipelines.ingest import ingest_exclusive
    from pipelines.validate import validate_exclusive

    end = hour_end(at)
    started = time.monotonic()
    for step in (ingest_exclusive, validate_exclusive, build_activity, embed_new_items):
        step_started = time.monotonic()
        step(end)
        console.print(f"step {step.__name__} {time.monotonic() - step_started:.2f} s")
    scored = score_active_users(end)
    console.print(f"step score_active_users {scored.seconds:.2f} s")
    report = publish_active_users(end)
    console.print(f"step publish_active_users {report.seconds:.2f} s")
    console.print(
        f"refresh {report.batch}: {report.status}; {scored.active_users:,} active users, "
        f"{report.users:,} rows and {report.similar_items:,} new similar lists written, "
        f"{scored.new_items:,} new issues indexed, in {time.monotonic() - started:.1f} s"
    )
    if report.freshness_seconds is not None:
        console.print(f"newest event to live: {report.freshness_seconds:,.1f} s")


@app.command()
def status() -> None:
    """The live table, how fresh it is, and the last hourly refresh."""
    from pipelines.hourly import latest_refresh
    from pipelines.publish import table_versions

    settings = get_settings()
    live = next((row for row in table_versions(settings) if row["live"]), None)
    table = Table(title="INBO recommendations", show_header=False)
    if live is None:
        table.add_row("live table", "none yet: run `inbo demo` or the inbo_nightly DAG")
    else:
        table.add_row("live table", f"{live['version']} ({live['users']:,} users)")
        table.add_row("published", str(live["created_at"]))
    last = latest_refresh(settings)
    if last is None:
        table.add_row("last hourly refresh", "none yet")
    else:
        table.add_row("last hourly refresh", f"batch {last.batch}: {last.status}")
        if last.published_at:
            table.add_row("  rows written", f"{last.users:,} users at {last.published_at}")
        if last.freshness_seconds is not None:
            table.add_row(
                "  freshness",
                f"{last.freshness_seconds:,.1f} s from the newest event "
                f"({last.newest_event_at}) to live",
            )
    console.print(table)


@app.command()
def reconcile(
    repair: Annotated[
        bool, typer.Option(help="Rewrite drifted counters from the warehouse, backed up first.")
    ] = False,
    restore: Annotated[
        str | None, typer.Option(help="Put back the counters a repair backed up (its backup id).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm --repair or --restore.")] = False,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="End of the validated batch to check at (UTC, 2026-11-26 or 2026-11-26T14:00). "
            "Default: the newest validated batch.",
        ),
    ] = None,
) -> None:
    """Compare the app's per-item Redis counters with the warehouse; repair or restore them."""
    from pipelines.reconcile import reconcile_counters, restore_counters

    if repair and restore:
        raise InboError("--repair and --restore undo each other: give one of them")
    if repair or restore:
        _confirm("rewrite the app's counters in Redis", yes)
    if restore:
        restored = restore_counters(restore)
        console.print(f"restored the counters of {restored:,} items from backup {restore}")
        return
    figures, worst = _reconcile_tables(reconcile_counters(_reconcile_end(at), repair=repair))
    console.print(figures)
    if worst.row_count:
        console.print(worst)


def _confirm(action: str, yes: bool) -> None:
    """Go on only with `--yes`, or when the person at the terminal agrees."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise InboError(f"refusing to {action} without --yes (no terminal to confirm on)")
    typer.confirm(f"{action[:1].upper()}{action[1:]}?", abort=True)


def _reconcile_end(at: str | None) -> datetime:
    """`--at`, else the end of the newest validated batch."""
    if at is not None:
        return hour_end(at)
    from inbo.lake import Lake, batch_end
    from pipelines.validate import latest_validated_batch

    return batch_end(latest_validated_batch(Lake(get_settings().lake)))


def _reconcile_tables(report: ReconcileReport) -> tuple[Table, Table]:
    """The figures, and the worst items: counter / warehouse where they differ."""
    from pipelines.app_counters import FIELDS

    def per_field(counts: dict[str, int]) -> str:
        return ", ".join(f"{name}={count:,}" for name, count in counts.items())

    verdict = "within" if report.within_target else "[red]above[/red]"
    figures = Table(title=f"app counters vs warehouse, batch {report.batch}", show_header=False)
    figures.add_row("items checked", f"{report.items_checked:,} in {report.seconds:.1f} s")
    figures.add_row(
        "inconsistent",
        f"{report.inconsistent_items:,} = {100 * report.inconsistency_rate:.2f}%, "
        f"{verdict} the {100 * report.target:.2f}% target",
    )
    figures.add_row("counted from", per_field(report.counted))
    figures.add_row("counters lack", per_field(report.missing))
    figures.add_row("counters exceed", per_field(report.extra))
    if report.backup:
        figures.add_row(
            "repaired",
            f"{report.repaired:,} items ({report.changed_during_repair:,} changed meanwhile, "
            f"left); undo: inbo reconcile --restore {report.backup}",
        )
    figures.add_row("report", report.path)
    worst = Table("item", "difference", *FIELDS, title="worst items (counter / warehouse)")
    for row in report.worst:
        counter, warehouse = row["counter"], row["warehouse"]
        worst.add_row(
            str(row["item_id"]),
            str(row["difference"]),
            *(
                f"{counter[f]:,} / {warehouse[f]:,}"
                if counter[f] != warehouse[f]
                else f"{counter[f]:,}"
                for f in FIELDS
            ),
        )
    return figures, worst


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment for an Airflow command: this repo as AIRFLOW_HOME, our settings passed on."""
    env = dict(os.environ)
    env["AIRFLOW_HOME"] = str(REPO_ROOT)
    env["INBO_VAR_DIR"] = str(settings.var_dir)
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    return env


def run_airflow_dag(dag_id: str, end: datetime, settings: Settings) -> Path:
    """`airflow dags test` for the batch ending at `end`; Airflow's output goes to a log file."""
    log_dir = settings.var_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{dag_id}-{end:%Y%m%dT%H%M}.log"
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = airflow_env(settings)
    with log_path.open("w") as log_file:
        err.print("preparing the Airflow database ...")
        _run([airflow, "db", "migrate"], env, log_file, log_path)
        err.print(f"running {dag_id} for the interval ending {end:%Y-%m-%d %H:%M} UTC ...")
        _run([airflow, "dags", "test", dag_id, end.isoformat()], env, log_file, log_path)
    return log_path


def _run(command: list[str], env: dict[str, str], log_file: Any, log_path: Path) -> None:
    result = subprocess.run(
        command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT
    )
    if result.returncode != 0:
        raise InboError(
            f"`{' '.join(command[1:])}` failed (exit {result.returncode}); see {log_path}"
        )


def _print_run_summary(settings: Settings, end: datetime) -> None:
    from inbo.lake import Lake, batch_key

    lake = Lake(settings.lake)
    batch = batch_key(end)
    ingest = json.loads(lake.read_json("_reports/ingest", batch))
    validated = json.loads(lake.read_json("_reports/validate", batch))
    table = Table("step", "figures", title=f"batch {batch}")
    table.add_row("extracted", ", ".join(f"{k}={v:,}" for k, v in ingest["extracted"].items()))
    table.add_row("conversion rate", f"{100 * ingest['conversion_rate']:.2f}%")
    quarantined = {
        **ingest["quarantined"],
        **{f"{k} (validate)": v for k, v in validated["quarantined"].items() if v},
    }
    table.add_row("quarantined", ", ".join(f"{k}={v:,}" for k, v in quarantined.items()) or "none")
    if quarantined:
        table.add_row("quarantine files", f"{lake.path('quarantine')}/<table>/batch={batch}/")
    table.add_row(
        "passed validation", ", ".join(f"{k}={v:,}" for k, v in validated["passed"].items())
    )
    for name, page in validated["data_docs"].items():
        table.add_row(f"Data Docs: {name}", page)
    console.print(table)


def _next_steps(redis_url: str, end: datetime) -> str:
    venv = Path(sys.executable).parent
    return "\n".join(
        [
            "Where to look next:",
            f"  recommendations  {venv}/inbo recs <USER_ID>",
            f"  redis-cli        {_redis_cli_hint(redis_url)}",
            f"  Airflow UI       AIRFLOW_HOME={REPO_ROOT} {venv}/airflow standalone   (http://localhost:8080)",
            f"  MLflow UI        {venv}/mlflow ui --backend-store-uri {get_settings().mlflow_uri} --port 5000",
            f"  re-run the DAG   AIRFLOW_HOME={REPO_ROOT} {venv}/airflow dags test inbo_nightly {end:%Y-%m-%d}",
        ]
    )


def _redis_cli_hint(url: str) -> str:
    from pipelines.publish import redis_cli_example

    return redis_cli_example(url)


def main() -> None:
    """Entry point: platform errors become one line on stderr and a non-zero exit code."""
    try:
        app()
    except InboError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
