"""`inbo` commands for watching the platform: health, the metrics exporter, the dashboard."""

from __future__ import annotations

from cli.app import app  # noqa: F401  (the commands below register on it)

PANEL = "Monitoring"
