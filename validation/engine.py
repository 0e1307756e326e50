"""Great Expectations plumbing: a quiet context, one suite, one run kept in memory.

great_expectations is imported inside functions: it takes about two seconds and logs at INFO on
import, and `validation` is imported on DAG-parse and CLI start-up paths.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from inbo.errors import SourceError
from validation.suites import Check, Suite

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.core.validation_definition import ValidationDefinition
    from great_expectations.data_context import AbstractDataContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A failed check and the positions of its failing rows (None: every row, a table check)."""

    check: Check
    label: str
    positions: list[int] | None


@dataclass(frozen=True)
class Run:
    """What `run` learned: GE's verdict, its statistics, the failures in suite order, and GE's
    result itself (for `validation.docs.record`)."""

    success: bool
    statistics: dict[str, Any]
    failures: list[Failure]
    outcome: ExpectationSuiteValidationResult


def run(suite: Suite, frame: pd.DataFrame, run_time: datetime) -> Run:
    """Validate `frame` (which must have a positional index) against `suite`, in memory.

    Checks on a missing column are left out; the suite's column-exists check covers them.
    `run_time` is the run's time in GE's result, so a rerun of a batch gives the same one.
    """
    quiet()
    import great_expectations as gx

    checks = [c for c in suite.checks if c.table_level or c.source in frame.columns]
    definition, order = _definition(context(), suite.name, checks)
    data = _checked_frame(suite, checks, frame)
    run_id = gx.RunIdentifier(run_name=suite.name, run_time=run_time)
    result = definition.run(
        batch_parameters={"dataframe": data}, result_format="COMPLETE", run_id=run_id
    )
    failed = [_failure(suite.name, checks, order, r) for r in result.results if not r.success]
    in_order = [failure for _, failure in sorted(failed, key=lambda pair: pair[0])]
    return Run(bool(result.success), dict(result.statistics), in_order, result)


def quiet() -> None:
    """No analytics, and GE's INFO chatter (some of it from loggers it sets to INFO) off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations  # noqa: F401  (creates the loggers set below)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations."):
            logging.getLogger(name).setLevel(logging.WARNING)


def context(
    stores: Path | None = None, sites: dict[str, dict[str, Any]] | None = None
) -> AbstractDataContext:
    """A context without progress bars or analytics: in memory, or over the filesystem stores
    under `stores` (which then keep what is saved to them), with the Data Docs `sites`."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        FilesystemStoreBackendDefaults,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    defaults = (
        InMemoryStoreBackendDefaults()
        if stores is None
        else FilesystemStoreBackendDefaults(root_directory=str(stores))
    )
    config = DataContextConfig(
        store_backend_defaults=defaults,
        data_docs_sites=sites or {},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _definition(
    context: AbstractDataContext, name: str, checks: list[Check]
) -> tuple[ValidationDefinition, dict[str, int]]:
    """The validation definition, and the position in `checks` of each expectation id."""
    import great_expectations as gx

    asset = context.data_sources.add_pandas(name).add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    order = {}
    for position, check in enumerate(checks):
        expectation = getattr(gx.expectations, check.expectation)(
            column=check.column, **check.kwargs
        )
        order[str(suite.add_expectation(expectation).id)] = position
    definition = gx.ValidationDefinition(name=name, data=batch, suite=suite)
    return context.validation_definitions.add(definition), order


def _checked_frame(suite: Suite, checks: list[Check], frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its timestamp columns in UTC and the derived boolean columns added."""
    stamps = {c: _utc(suite.name, frame[c]) for c in suite.timestamps if c in frame}
    derived = {c.column: c.derive(frame) for c in checks if c.derive is not None}
    return frame.assign(**stamps, **derived)


def _utc(suite: str, column: pd.Series) -> pd.Series:
    """A canonical timestamp column as UTC (naive means UTC); one that does not parse is no table."""
    try:
        return pd.to_datetime(column, utc=True)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{suite}: {column.name} is not a timestamp column: {exc}") from None


def _failure(
    suite: str, checks: list[Check], order: dict[str, int], outcome: ExpectationValidationResult
) -> tuple[int, Failure]:
    """A failed outcome and its check's place in the suite; one GE could not evaluate raises."""
    config = outcome.expectation_config
    assert config is not None, "GE attaches its config to every result of a suite run"
    label = f"{config.type}({config.kwargs['column']})"
    error = _exception(outcome.exception_info or {})
    if error:
        raise SourceError(f"{suite}: {label} could not be evaluated: {error}")
    position = order[str(config.id)]
    check = checks[position]
    rows = None if check.table_level else list(outcome.result["unexpected_index_list"])
    return position, Failure(check, label, rows)


def _exception(info: dict[str, Any]) -> str | None:
    """GE nests exception info per metric when one raised, and keeps it flat when none did."""
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None
