"""`inbo` commands for watching the platform: health, the metrics exporter, the dashboard."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.table import Table

from cli.app import JsonOption, app, console, print_json

PANEL = "Monitoring"
LEVEL_STYLE = {"ok": "green", "degraded": "yellow", "down": "red"}


@app.command(rich_help_panel=PANEL)
def health(as_json: JsonOption = False) -> None:
    """Every part the platform depends on, one line each; exits 0 ok, 1 degraded, 2 down."""
    from pipelines.monitoring.health import check_components

    report = check_components()
    if as_json:
        print_json(asdict(report))
    else:
        table = Table("check", "level", "detail", title=f"health: {report.level}")
        for check in report.checks:
            style = LEVEL_STYLE[check.level]
            table.add_row(check.name, f"[{style}]{check.level}[/{style}]", check.detail)
        console.print(table)
    raise typer.Exit(report.level.exit_code)
