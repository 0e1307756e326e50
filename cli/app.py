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
    str | None,
    typer.Option(
        "--date",
        help="End of the batch's data interval (YYYY-MM-DD, midnight UTC). Default: today.",
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as one JSON document (shapes: docs/cli-json.md)."
    ),
]
"""Every reporting command takes `--json`; its output is one JSON document on stdout."""

AtOption = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="End of the interval (UTC, e.g. 2026-11-26T14:00). Default: the latest tick of "
        "INBO_HOURLY_SCHEDULE.",
    ),
]


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logs.configure(verbose)


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


def hour_end(at: str | None) -> datetime:
    """The interval end for `--at` (UTC); by default the latest tick of `INBO_HOURLY_SCHEDULE`."""
    if at is None:
        from croniter import croniter

        from inbo.settings import get_settings

        latest: datetime = croniter(get_settings().hourly_schedule, datetime.now(UTC)).get_prev(
            datetime
        )
        return latest
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise typer.BadParameter(
            f"{at!r} is not a time like 2026-11-26T14:00", param_hint="--at"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
