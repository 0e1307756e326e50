"""`inbo` commands on the serving side: the embedded services, the live table and what it says."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli.app import JsonOption, app, confirm, console, flatten, print_json
from inbo.durations import duration
from inbo.errors import InboError, ServiceUnavailable

if TYPE_CHECKING:
    from pipelines.health import Health
    from pipelines.publish.reader import UserRecs

log = logging.getLogger(__name__)


PANEL = "Serving"


@app.command(rich_help_panel=PANEL)
def services(
    stop: Annotated[bool, typer.Option(help="Stop the embedded Redis server.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Start (or reuse) the embedded services and print where everything is.

    Exit code 0 when every service can be used, 3 when one is down (an external Redis or MLflow
    server that does not answer).
    """
    from inbo.services import ensure_redis, service_status, services_up, stop_redis
    from inbo.settings import REPO_ROOT, get_settings

    settings = get_settings()
    if stop:
        stopped = stop_redis(settings)
        if as_json:
            print_json({"stopped": stopped})
        else:
            console.print("embedded Redis stopped" if stopped else "no embedded Redis was running")
        return
    try:
        ensure_redis(settings)
    except InboError as exc:  # reported below, as the service's state
        log.debug("Redis did not start: %s", exc)
    found = {**service_status(settings), "lake": settings.lake, "airflow_home": str(REPO_ROOT)}
    up = services_up(found)
    if as_json:
        print_json({"state": "up" if up else "down", **found})
    else:
        table = Table(title="INBO services", show_header=False)
        for key, value in flatten(found).items():
            table.add_row(key, str(value))
        console.print(table)
    if not up:
        raise typer.Exit(ServiceUnavailable.exit_code)


@app.command(rich_help_panel=PANEL)
def recs(
    user_id: Annotated[int, typer.Argument(help="The user to read recommendations for.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw payload, exactly as Redis holds it.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show (the payload keeps all).")] = 10,
) -> None:
    """Read a user's recommendations from Redis, exactly as a frontend does."""
    from inbo.errors import UnknownUser
    from inbo.settings import get_settings
    from pipelines.catalogue import catalogue, known_user
    from pipelines.publish.steps import read_recs

    settings = get_settings()
    shown = None if as_json else catalogue(settings)  # the raw payload needs no reason texts
    result = read_recs(user_id, settings, catalogue=shown)
    if not result["personal"] and not known_user(settings, user_id):
        raise UnknownUser(
            f"unknown user {user_id}: not in the users table (apps would show the fallback list)"
        )
    if shown is None:
        print_json(result["payload"])
        return
    console.print(recs_table(result, shown, limit))


def recs_table(result: UserRecs, catalogue: dict[int, dict[str, str]], limit: int) -> Table:
    kind = "personal" if result["personal"] else "fallback (no personal row)"
    if result["variant"]:
        kind += f", variant {result['variant']}"
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


@app.command(rich_help_panel=PANEL)
def similar(
    item_id: Annotated[int, typer.Argument(help="The issue whose similar issues to list.")],
    as_json: JsonOption = False,
) -> None:
    """An issue's "more like this" list from the live Redis table."""
    from inbo.errors import InboError
    from inbo.settings import get_settings
    from pipelines.catalogue import titles
    from pipelines.publish.steps import read_similar

    settings = get_settings()
    found = read_similar(item_id, settings)
    if not found:
        raise InboError(f"item {item_id} has no 'more like this' row in the live table")
    if as_json:
        print_json(found)
        return
    named = titles(settings)
    table = Table(
        "rank", "item", "score", "title", title=f"more like {item_id}: {named.get(item_id, '')}"
    )
    for entry in found["items"]:
        table.add_row(
            str(entry["rank"]),
            str(entry["item_id"]),
            f"{entry['score']:.3f}",
            named.get(entry["item_id"], ""),
        )
    console.print(table)


@app.command(rich_help_panel=PANEL)
def rollback(
    to: Annotated[
        str | None, typer.Option(help="Version to switch to. Default: the previous one.")
    ] = None,
    list_versions: Annotated[
        bool, typer.Option("--list", help="List the versions kept in Redis (as `inbo versions`).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Switch readers back to an earlier table version."""
    from pipelines.publish.steps import rollback_table

    if list_versions:
        versions_list(as_json)
        return
    before, after = rollback_table(to)
    if as_json:
        print_json({"from": before, "to": after})
        return
    console.print(f"rolled back: {before} -> {after}")


versions_app = typer.Typer(help="The table versions kept in Redis.", no_args_is_help=False)
app.add_typer(versions_app, name="versions", rich_help_panel=PANEL)


@versions_app.callback(invoke_without_command=True)
def versions(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the table versions kept in Redis (the default), or delete one."""
    if ctx.invoked_subcommand is None:
        versions_list(as_json)


@versions_app.command("list")
def versions_list(as_json: JsonOption = False) -> None:
    """Every version with its state, users, and when garbage collection may delete it."""
    from pipelines.publish.steps import table_versions

    if as_json:
        print_json(table_versions())
        return
    table = Table("version", "created at", "status", "users", "live", "deletable in")
    for row in table_versions():
        table.add_row(
            row.version,
            str(row.created_at),
            row.status,
            str(row.users),
            "yes" if row.live else "",
            "" if row.expires_in is None else duration(row.expires_in),
        )
    console.print(table)


@versions_app.command("delete")
def versions_delete(
    version: Annotated[str, typer.Argument(help="A version that is not live.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm the deletion.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete a version that is not live now, whatever its state (its keys, then its record)."""
    from pipelines.publish.steps import remove_version

    confirm(f"delete table version {version} from Redis", yes)
    deleted = remove_version(version)
    if as_json:
        print_json({"version": version, "keys_deleted": deleted})
        return
    console.print(f"deleted {version}: {deleted:,} keys")


@app.command(rich_help_panel=PANEL)
def gc(as_json: JsonOption = False) -> None:
    """Delete every table version past its time: former live ones after the rollback window
    (INBO_VERSION_TTL_SECONDS), ones that never went live after a day, half-deleted ones."""
    from pipelines.publish.steps import collect_garbage

    deleted = collect_garbage()
    if as_json:
        print_json({"deleted": deleted})
        return
    console.print(
        f"deleted {len(deleted)} versions" + (f": {', '.join(deleted)}" if deleted else "")
    )


@app.command(rich_help_panel=PANEL)
def status(as_json: JsonOption = False) -> None:
    """The live table, how fresh it is, the last ingest's completeness, the last hourly refresh.

    Exit code 0 when healthy, 1 when stale (the newest data in the live table is older than
    INBO_STALE_AFTER_SECONDS), 3 when down (Redis not running or no table live). Never starts
    the embedded Redis.
    """
    from pipelines.health import State, check_health

    health = check_health()
    if as_json:
        print_json(health)
    else:
        console.print(status_table(health))
    if health.state is not State.HEALTHY:
        raise typer.Exit(health.state.exit_code)


def status_table(health: Health) -> Table:
    colour = {"healthy": "green", "stale": "yellow", "down": "red"}[health.state.value]
    table = Table(title="INBO recommendations", show_header=False)
    table.add_row("state", f"[{colour}]{health.state.value}[/{colour}]")
    for reason in health.reasons:
        table.add_row("  why", reason)
    live = health.live
    if live is not None:
        table.add_row("live table", f"{live.version} ({live.users:,} users)")
        table.add_row("went live", str(live.activated_at))
        table.add_row(
            "newest data", f"to {live.data_through} ({duration(live.data_age_seconds)} ago)"
        )
    ingested = health.last_ingest
    if ingested is not None:
        table.add_row("last ingest", f"batch {ingested['batch']} from {ingested['source']}")
        for name, found in ingested["completeness"].items():
            missing = found["missing_rows"]
            table.add_row(
                f"  {name}",
                f"{found['extracted_rows']:,} of {found['app_rows']:,} app rows extracted"
                + (f"; {missing:,} missing: {', '.join(found['missing'])}" if missing else ""),
            )
    if live is not None:
        table.add_row("last hourly refresh", _refresh_line(health.last_refresh))
        last = health.last_refresh or {}
        if last.get("published_at"):
            table.add_row("  rows written", f"{last['users']:,} users at {last['published_at']}")
        if last.get("freshness_seconds") is not None:
            table.add_row(
                "  freshness",
                f"{duration(last['freshness_seconds'])} from the newest event "
                f"({last['newest_event_at']}) to live",
            )
    return table


def _refresh_line(last: dict[str, Any] | None) -> str:
    if last is None:
        return "none on this table yet"
    return f"batch {last['batch']}: {last['status']}"
