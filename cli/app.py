"""The `inbo` command's shared ground: the Typer app, the consoles, and how options are parsed.

Every command module (`cli.pipeline`, `cli.serving`, `cli.ml`, `cli.operations`, `cli.demo`)
registers its commands on `app`; `cli.main` imports them all and runs it. Heavy libraries are
imported inside each command so `inbo --help` answers at once.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from inbo import logs

app = typer.Typer(
    help="INBO Recs: build and publish newsletter recommendations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)

DateOption = Annotated[
    datetime | None,
    typer.Option(
        "--date",
        formats=["%Y-%m-%d"],
        help="End of the batch's data interval (midnight UTC of that day). Default: today.",
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as one JSON document (shapes: docs/cli-json.md)."
    ),
]
"""Every reporting command takes `--json`; its output is one JSON document on stdout."""

AT_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]
"""What `--at` accepts: a UTC time like 2026-11-26T14:00 (an offset is converted to UTC)."""

AtOption = Annotated[
    datetime | None,
    typer.Option(
        "--at",
        formats=AT_FORMATS,
        help="End of the interval (UTC, e.g. 2026-11-26T14:00). Default: the latest tick of "
        "INBO_HOURLY_SCHEDULE.",
    ),
]


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logs.configure(verbose)


def interval_end(date: datetime | None) -> datetime:
    """The batch end for `--date`: midnight UTC of that day; today's when not given."""
    day = date or datetime.now(UTC)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def hour_end(at: datetime | None) -> datetime:
    """The interval end for `--at` (UTC); by default the latest tick of `INBO_HOURLY_SCHEDULE`."""
    if at is None:
        from croniter import croniter

        from inbo.settings import get_settings

        latest: datetime = croniter(get_settings().hourly_schedule, datetime.now(UTC)).get_prev(
            datetime
        )
        return latest
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def print_json(data: object) -> None:
    """One JSON document on stdout: dataclasses, datetimes, paths and enums as plain values.

    Plain `print`, not rich, so the output is byte-for-byte JSON whatever the terminal width.
    """
    import json

    print(json.dumps(data, default=_plain, indent=2))


def _plain(value: object) -> object:
    from dataclasses import asdict, is_dataclass
    from enum import Enum
    from pathlib import PurePath

    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def confirm(action: str, yes: bool) -> None:
    """Go on only with `--yes`, or when the person at the terminal agrees."""
    from inbo.errors import InboError

    if yes:
        return
    if not sys.stdin.isatty():
        raise InboError(f"refusing to {action} without --yes (no terminal to confirm on)")
    typer.confirm(f"{action[:1].upper()}{action[1:]}?", abort=True)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as `a.b` keys, for a two-column table."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
