"""Validation history and Data Docs: every batch's results kept on disk, pages that work offline.

`record` saves each suite's result in Great Expectations' filesystem stores, so the Data Docs
index lists every batch validated, not only the last. The result it saves carries the pipeline's
verdict, not GE's: GE fails a suite as soon as one row fails one expectation, while the pipeline
quarantines bad rows and passes a table whose bad-row share (ingest's quarantine included) is
within the threshold (`validation.exceeds`). The failed expectations and their sample rows stay
on the page; the share, the threshold and the batch's status are under "Show more info...".

GE's page templates load Bootstrap, jQuery, Font Awesome, Vega and friends from CDNs, so offline
a page is unstyled and the index's results table (filled by JavaScript) is empty. Copies of those
files ship in `validation/static` (see its README); each page written is pointed at them.
Cheap to import: great_expectations loads inside `record`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from validation.checks import ValidationResult, exceeds, percent

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.data_context import AbstractDataContext

log = logging.getLogger(__name__)

SITE = "inbo"
"""The one Data Docs site."""

STATIC = Path(__file__).parent / "static"
VENDOR = "static/vendor"
"""Where, under the site, the copies of `STATIC` go."""

ASSETS: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/bootstrap.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": "bootstrap-table/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": "bootstrap-table/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": "bootstrap-table/bootstrap-table-filter-control.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": "bootstrap-datepicker/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": "bootstrap-datepicker/bootstrap-datepicker.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": "bootstrap-dark/bootstrap-prefers-dark.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome/css/all.min.css",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper/popper.min.js",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega/vega-embed.min.js",
}
"""Every CDN file great_expectations 1.24's page templates load, and its copy under `STATIC`."""

IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
"""GE's logo host. Its images are in the site's own `static/images`, but for the dark-mode logo."""
DARK_LOGO = {"full_logo_dark.png": "logo-long.png"}

_IMAGE = re.compile(
    rf"""(?<=["'(])(?:{re.escape(IMAGES)}|(?:\.{{1,2}}/)*static/images/)([\w.-]+)[^"')\s]*"""
)
"""An image on GE's host, or in the site's `static/images` (GE's favicon link on a validation
page is one folder short)."""
_SRI = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"')
"""Subresource-integrity attributes: a browser refuses a `file://` script that has them."""
REMOTE = re.compile(r'<(?:script|link|img)\b[^>]*?\b(?:src|href)="(https?://[^"]+)"')
"""A tag that loads a file from the network."""

DROPPED = ("unexpected_list", "unexpected_index_list", "unexpected_index_query")
"""Per-row lists GE's COMPLETE results hold (a row index each): the quarantine has the rows, the
history keeps GE's 20-row samples, so a bad night does not make every later index build slow."""


@dataclass(frozen=True)
class Verdict:
    """The pipeline's decision on one table of one batch, as its Data Docs page shows it."""

    batch: str
    status: str
    """The batch's: passed, held or accepted (see `pipelines.validate`)."""
    bad: int
    """Rows quarantined, ingest's included."""
    total: int
    """Rows extracted."""
    threshold: float

    @property
    def passed(self) -> bool:
        """The table is within the threshold (an accepted batch's table above it did not pass)."""
        return not exceeds(self.bad, self.total, self.threshold)

    def markers(self) -> dict[str, str]:
        share = self.bad / max(self.total, 1)
        return {
            "batch": self.batch,
            "rows quarantined (ingest and validate)": f"{self.bad:,} of {self.total:,}",
            "bad-row share": percent(share, self.threshold),
            "quarantine threshold": f"{self.threshold:.2%}",
            "table": "within the threshold" if self.passed else "above the threshold",
            "batch status": self.status,
        }


def record(
    results: Sequence[tuple[ValidationResult, Verdict]],
    run_time: datetime,
    stores: Path,
    site: Path,
) -> dict[str, Path]:
    """Keep each suite's result under `stores` with the pipeline's verdict and render its page
    and the index into the Data Docs `site`; each suite's page.

    A result is keyed by its batch (the run name) and `run_time`, so a rerun of a batch replaces
    its page instead of adding one.
    """
    from validation import engine

    engine.quiet()
    context = engine.context(stores, {SITE: _site_config(site)})
    keys = {result.suite: _keep(context, result, verdict, run_time) for result, verdict in results}
    identifiers = [identifier for pair in keys.values() for identifier in pair]
    context.build_data_docs(site_names=[SITE], resource_identifiers=identifiers)
    shutil.copytree(STATIC, site / VENDOR, dirs_exist_ok=True)
    pages = {name: _page(context, key) for name, (key, _) in keys.items()}
    suites = [_page(context, suite) for _, suite in keys.values()]
    for page in [site / "index.html", *pages.values(), *suites]:
        offline(page, site)
    return pages


def _keep(
    context: AbstractDataContext, result: ValidationResult, verdict: Verdict, run_time: datetime
) -> tuple[Any, Any]:
    """Save the suite as it ran (its bounds move with each batch) and the result as `_as_kept`;
    their keys."""
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    outcome = result.outcome
    configs = [r.expectation_config for r in outcome.results if r.expectation_config is not None]
    context.suites.add_or_update(gx.ExpectationSuite(name=result.suite, expectations=configs))
    suite = ExpectationSuiteIdentifier(name=result.suite)
    run_id = gx.RunIdentifier(run_name=verdict.batch, run_time=run_time)
    key = ValidationResultIdentifier(
        expectation_suite_identifier=suite, run_id=run_id, batch_identifier=result.suite
    )
    context.validation_results_store.set(key, _as_kept(outcome, verdict, run_id))
    return key, suite


def _site_config(site: Path) -> dict[str, Any]:
    return {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }


def _as_kept(
    outcome: ExpectationSuiteValidationResult, verdict: Verdict, run_id: Any
) -> ExpectationSuiteValidationResult:
    """`outcome` with the pipeline's verdict, its reasons among the batch markers, the batch's
    run id, its asset's name where the page looks for it, and GE's row samples instead of every
    failing row's index."""
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )

    meta = dict(outcome.meta)
    meta["batch_markers"] = {**meta.get("batch_markers", {}), **verdict.markers()}
    meta["batch_spec"] = {**meta.get("batch_spec", {}), "data_asset_name": outcome.asset_name}
    meta["run_id"] = run_id
    meta["validation_time"] = run_id.run_time
    return ExpectationSuiteValidationResult(
        success=verdict.passed,
        results=[_sampled(r) for r in outcome.results],
        suite_name=outcome.suite_name,
        suite_parameters=outcome.suite_parameters,
        statistics=outcome.statistics,
        meta=meta,
    )


def _sampled(result: ExpectationValidationResult) -> ExpectationValidationResult:
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult

    return ExpectationValidationResult(
        success=result.success,
        expectation_config=result.expectation_config,
        result={k: v for k, v in result.result.items() if k not in DROPPED},
        meta=result.meta,
        exception_info=result.exception_info,
    )


def _page(context: AbstractDataContext, identifier: Any) -> Path:
    """The file of the page GE rendered for `identifier` (a suite or a result)."""
    (url,) = context.get_docs_sites_urls(resource_identifier=identifier, site_name=SITE)
    return Path(unquote(urlparse(url["site_url"]).path))


def offline(page: Path, site: Path) -> None:
    """Point `page` at the site's copies of GE's CDN files; warn of any it still loads remotely."""
    vendor = os.path.relpath(site / VENDOR, page.parent)
    images = os.path.relpath(site / "static" / "images", page.parent)
    html = page.read_text(encoding="utf-8")
    for url, path in ASSETS.items():
        html = html.replace(f'"{url}"', f'"{vendor}/{path}"')
    html = _IMAGE.sub(lambda match: f"{images}/{DARK_LOGO.get(match[1], match[1])}", html)
    html = _SRI.sub("", html)
    page.write_text(html, encoding="utf-8")
    for url in REMOTE.findall(html):
        log.warning(
            "Data Docs page %s loads %s from the network: vendor it in %s (validation.docs.ASSETS)",
            page,
            url,
            STATIC,
        )
