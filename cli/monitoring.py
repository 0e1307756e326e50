"""`inbo` commands for watching the platform: health, the metrics exporter, the dashboard."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from cli.app import JsonOption, app, console, err, interval_end, print_json

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


@app.command(rich_help_panel=PANEL)
def exporter(
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default INBO_EXPORTER_PORT, 9150).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 for every interface.")] = (
        "127.0.0.1"
    ),
) -> None:
    """Serve Prometheus metrics (/metrics) and probes (/healthz, /readyz) until Ctrl-C."""
    import signal

    from inbo.errors import ConfigError
    from inbo.settings import get_settings
    from pipelines.monitoring.exporter import Exporter

    settings = get_settings()
    try:
        server = Exporter(settings, host, port or settings.exporter_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port or settings.exporter_port}: {exc.strerror}"
        ) from None
    signal.signal(signal.SIGTERM, _interrupt)
    err.print(f"exporter at {server.url}/metrics (probes /healthz, /readyz); Ctrl-C stops it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()


def _interrupt(*_: object) -> None:
    """SIGTERM (a supervisor stopping the exporter) ends it as Ctrl-C does."""
    raise KeyboardInterrupt


@app.command(rich_help_panel=PANEL)
def dashboard(
    date: Annotated[
        datetime | None,
        typer.Option(
            "--date",
            formats=["%Y-%m-%d"],
            help="Nightly batch ending at midnight UTC of that day. Default: the newest scored night.",
        ),
    ] = None,
    open_page: Annotated[
        bool, typer.Option("--open", help="Open the page in the default browser.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Write the analytics dashboard of a nightly batch (one offline HTML page) and print its path."""
    from inbo.errors import DataNotFound
    from pipelines.monitoring.dashboard import build_dashboard, latest_night

    end = interval_end(date) if date else latest_night()
    if end is None:
        raise DataNotFound("no nightly batch was scored yet: run the nightly (or inbo score) first")
    written = build_dashboard(end)
    if as_json:
        print_json(written)
    else:
        console.print(f"dashboard of batch {written.batch}: {written.figures} charts")
        for title in written.failed:
            err.print(f"[yellow]section {title} could not be drawn; see the page[/yellow]")
        print(written.path)
    if open_page:
        import webbrowser

        webbrowser.open(written.path.as_uri())
