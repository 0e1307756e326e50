"""`inbo` commands for operators: counter reconciliation and the scale benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli.app import AT_FORMATS, JsonOption, app, confirm, console, hour_end, print_json

if TYPE_CHECKING:
    from pipelines.reconcile import ReconcileReport


PANEL = "Operations"


@app.command(rich_help_panel=PANEL)
def reconcile(
    repair: Annotated[
        bool, typer.Option(help="Rewrite drifted counters from the warehouse, backed up first.")
    ] = False,
    restore: Annotated[
        str | None, typer.Option(help="Put back the counters a repair backed up (its backup id).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm --repair or --restore.")] = False,
    at: Annotated[
        datetime | None,
        typer.Option(
            "--at",
            formats=AT_FORMATS,
            help="End of the validated batch to check at (UTC, 2026-11-26 or 2026-11-26T14:00). "
            "Default: the newest validated batch.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compare the app's per-item Redis counters with the warehouse; repair or restore them."""
    from inbo.errors import InboError
    from pipelines.reconcile import reconcile_counters, restore_counters

    if repair and restore:
        raise InboError("--repair and --restore undo each other: give one of them")
    if repair or restore:
        confirm("rewrite the app's counters in Redis", yes)
    if restore:
        restored = restore_counters(restore)
        if as_json:
            print_json({"backup": restore, "items_restored": restored})
            return
        console.print(f"restored the counters of {restored:,} items from backup {restore}")
        return
    report = reconcile_counters(reconcile_end(at), repair=repair)
    if as_json:
        print(report.to_json())
        return
    figures, worst = reconcile_tables(report)
    console.print(figures)
    if worst.row_count:
        console.print(worst)


def reconcile_end(at: datetime | None) -> datetime:
    """`--at`, else the end of the newest validated batch."""
    if at is not None:
        return hour_end(at)
    from inbo.lake import Lake, batch_end
    from inbo.settings import get_settings
    from pipelines.validate import latest_validated_batch

    return batch_end(latest_validated_batch(Lake(get_settings().lake)))


def reconcile_tables(report: ReconcileReport) -> tuple[Table, Table]:
    """The figures, and the worst items: counter / warehouse where they differ."""
    from pipelines.app.counters import FIELDS

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


@app.command("bench-hourly", rich_help_panel=PANEL)
def bench_hourly(
    users: Annotated[int, typer.Option(min=100, help="Users in the bench world.")] = 200_000,
    items: Annotated[int, typer.Option(min=10, help="Newsletter issues.")] = 5_000,
    days: Annotated[int, typer.Option(min=2, help="Days of traffic before the timed hour.")] = 3,
    as_json: JsonOption = False,
) -> None:
    """Time one hourly refresh over a busy hour after a nightly run (world built once, reused)."""
    from inbo.settings import get_settings
    from pipelines.offline.bench_hourly import as_json as result_json
    from pipelines.offline.bench_hourly import format_result, run_hourly_bench

    settings = get_settings()
    result = run_hourly_bench(settings, users, items, days)
    out = settings.reports_dir / "bench-hourly.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result_json(result))
    if as_json:
        print(result_json(result))
        return
    print(format_result(result))
    console.print(f"written to {out}")


@app.command("bench-publish", rich_help_panel=PANEL)
def bench_publish(
    users: Annotated[int, typer.Option(min=100, help="Users in the published table.")] = 100_000,
    holding: Annotated[
        list[int] | None,
        typer.Option(
            min=1,
            help="Keys Redis holds (retired versions) before the timed publishes; repeatable. "
            "Default: 200000 and 1500000.",
        ),
    ] = None,
    shards: Annotated[int, typer.Option(min=1, max=999, help="Score shard files.")] = 8,
    per_user: Annotated[int, typer.Option(min=1, help="Items per user.")] = 50,
    items: Annotated[int, typer.Option(min=100, help="Item ids the lists draw from.")] = 50_000,
    repeats: Annotated[int, typer.Option(min=1, help="Timed publishes per measurement.")] = 3,
    write: Annotated[bool, typer.Option(help="Update docs/benchmarks.md.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Time a publish against the keys Redis holds, and reads during a publish, AOF on and off.

    Uses its own embedded Redis under <var>/bench/, emptied before and after the run.
    """
    from inbo.settings import get_settings
    from pipelines.offline.bench_publish import (
        PublishParams,
        format_report,
        run_publish_bench,
        write_doc,
    )

    params = PublishParams(
        users=users,
        holding=tuple(holding or PublishParams.holding),
        shards=shards,
        per_user=per_user,
        items=items,
        repeats=repeats,
    )
    settings = get_settings()
    from pipelines.offline.bench_publish import as_json as report_json

    report = run_publish_bench(settings, params)
    emit_benchmark(
        report, settings.reports_dir / "bench-publish.json", report_json, format_report,
        write_doc if write else None, as_json,
    )  # fmt: skip


@app.command(rich_help_panel=PANEL)
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
    as_json: JsonOption = False,
) -> None:
    """Time the nightly pipeline on a large world: stage wall times, peak RSS, publish, reads.

    The world is simulated once under <var>/bench/ and reused; simulation and the previous
    nights' warm-up are not timed. Each step runs in its own process.
    """
    from pipelines.offline.bench import BenchParams, format_report, run_bench, write_doc

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
    if write:
        write_doc(report)
    if as_json:
        print_json(report)
        return
    print(format_report(report))


@app.command("bench-anomaly", rich_help_panel=PANEL)
def bench_anomaly(
    users: Annotated[int, typer.Option(min=1000, help="Users in the bench world.")] = 60_000,
    items: Annotated[
        int, typer.Option(min=1000, help="Newsletter issues (new issues per minute follow).")
    ] = 120_000,
    history_days: Annotated[
        int, typer.Option(min=7, max=56, help="Days of seasonal history before the clean week.")
    ] = 14,
    clean_days: Annotated[
        int, typer.Option(min=1, help="Clean days replayed minute by minute.")
    ] = 7,
    seed: Annotated[int, typer.Option(help="Random seed of the world and its incidents.")] = 7,
    write: Annotated[bool, typer.Option(help="Update docs/benchmarks.md.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Replay a clean simulated week through the anomaly monitor (false alarms), then each
    injected incident at the daily peak and trough (detection delay).

    The world is simulated under <var>/bench/anomaly/ (replaced on every run).
    """
    from inbo.settings import get_settings
    from pipelines.offline.bench_anomaly import (
        AnomalyParams,
        format_report,
        run_anomaly_bench,
        write_doc,
    )
    from pipelines.offline.bench_anomaly import as_json as report_json

    settings = get_settings()
    params = AnomalyParams(users, items, history_days, clean_days, seed)
    report = run_anomaly_bench(settings, params)
    emit_benchmark(
        report, settings.reports_dir / "bench-anomaly.json", report_json, format_report,
        write_doc if write else None, as_json,
    )  # fmt: skip


@app.command("bench-experiments", rich_help_panel=PANEL)
def bench_experiments(
    users: Annotated[int, typer.Option(min=1000, help="Users in the played world.")] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Days the A/B runs in the closed loop.")] = 7,
    history_days: Annotated[int, typer.Option(min=7, help="Days before the A/B starts.")] = 14,
    seed: Annotated[int, typer.Option(help="Random seed of the world.")] = 7,
    splits: Annotated[int, typer.Option(min=20, help="A/A re-saltings and SRM trials.")] = 200,
    played: Annotated[
        Path | None,
        typer.Option(
            "--played",
            exists=True,
            file_okay=False,
            help="Analyse the var dir of an earlier `inbo play --experiment ranker-vs-popularity` "
            "instead of playing again.",
        ),
    ] = None,
    write: Annotated[bool, typer.Option(help="Update docs/benchmarks.md.")] = True,
    as_json: JsonOption = False,
) -> None:
    """The champion against popularity in the closed loop, then the readout's error rates on the
    same logs: A/A calibration, injected sample-ratio mismatch, the simulator's ground truth.

    The world is played under <var>/bench/experiments/ (replaced on every run) unless --played.
    """
    from inbo.settings import get_settings
    from pipelines.offline.bench_experiments import (
        ExperimentsParams,
        format_report,
        run_experiments_bench,
        write_doc,
    )
    from pipelines.offline.bench_experiments import as_json as report_json

    settings = get_settings()
    params = ExperimentsParams(users, days, history_days, seed, splits, played)
    report = run_experiments_bench(settings, params)
    emit_benchmark(
        report, settings.reports_dir / "bench-experiments.json", report_json, format_report,
        write_doc if write else None, as_json,
    )  # fmt: skip


def emit_benchmark(
    report: Any,
    record: Path,
    to_json: Callable[[Any], str],
    to_text: Callable[[Any], str],
    write_doc: Callable[[Any], None] | None,
    as_json: bool,
) -> None:
    """A benchmark's ending: its measurement kept at `record`, docs/benchmarks.md updated (unless
    --no-write), the report printed as JSON or as the doc's text."""
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(to_json(report))
    if write_doc is not None:
        write_doc(report)
    if as_json:
        print(to_json(report))
        return
    print(to_text(report))
    console.print(f"written to {record}")
