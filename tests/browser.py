"""Opening a report in Debian's headless Chromium with the network cut off, as the tests do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHARTS = """() => [...document.querySelectorAll('.plotly-graph-div')].map(d => ({
    id: d.id,
    svg: d.querySelector('svg.main-svg') !== null,
    traces: d.querySelectorAll('g.trace').length,
    title: (d.layout && d.layout.title && d.layout.title.text) || ''}))"""
"""Each plotly chart of the page: its div id, whether it drew its SVG, its traces, its title."""


@dataclass(frozen=True)
class Opened:
    charts: list[dict[str, Any]]
    text: str
    errors: list[str]
    remote: list[str]


def open_offline(page_path: Path, screenshot: Path | None = None) -> Opened:
    """Load `page_path` from disk, every non-file request refused and recorded; its charts, its
    text, the page's script errors and the remote requests it tried."""
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium"
        )
    from playwright.sync_api import Route, sync_playwright

    errors: list[str] = []
    remote: list[str] = []

    def offline(route: Route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            remote.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.route("**/*", offline)
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        charts = page.evaluate(CHARTS)
        text = page.inner_text("body")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return Opened(charts, text, errors, remote)
