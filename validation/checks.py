"""Split a frame into good rows and quarantined bad rows, and fail a batch with too many bad ones.

Cheap to import (DAG files and the CLI do): pandas and great_expectations load inside `validate`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from inbo.errors import ValidationFailed

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )

    from validation.engine import Failure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationResult:
    """One suite's verdict on one frame; `len(good) + len(bad) == checked` always."""

    suite: str
    good: pd.DataFrame
    """Rows that passed every check: input columns, order and index."""
    bad: pd.DataFrame
    """Failed rows: input columns, order and index, plus `_check` and `_reason`."""
    checked: int
    success: bool
    """GE's overall verdict (False as soon as one expectation failed)."""
    statistics: dict[str, Any]
    """GE's counts of evaluated, successful and unsuccessful expectations."""
    outcome: ExpectationSuiteValidationResult
    """GE's result, kept in the validation history by `validation.docs.record`."""


def validate(
    frame: pd.DataFrame,
    suite: str,
    *,
    known_user_ids: Collection[int] | None = None,
    known_item_ids: Collection[int] | None = None,
    now: datetime | None = None,
) -> ValidationResult:
    """Run the Great Expectations suite `suite` over `frame` and split its rows; never drops one.

    A row failing several checks is in `bad` once, with the first failed check in suite order
    (most basic first: missing column, null, type, set, duplicate, reference, range). Of rows
    sharing a value that must be unique, the first stays good and later copies are bad.
    Pass the batch's interval end as `now` so a rerun gives the same split; the default is the
    clock. Nothing is written: `validation.docs.record` keeps the result and renders its page.
    """
    import numpy as np

    from validation import engine, suites

    now = now or datetime.now(UTC)
    spec = suites.build(suite, now, known_user_ids, known_item_ids)
    positional = frame.reset_index(drop=True)
    run = engine.run(spec, positional, now)
    failed = _first_failures(positional, run.failures)
    is_bad = np.zeros(len(frame), dtype=bool)
    is_bad[failed.index.to_numpy()] = True
    good = frame.iloc[~is_bad]
    bad = frame.iloc[is_bad].assign(
        _check=failed["_check"].to_numpy(), _reason=failed["_reason"].to_numpy()
    )
    log.info("%s: %d of %d rows failed validation", suite, len(bad), len(frame))
    return ValidationResult(suite, good, bad, len(frame), run.success, run.statistics, run.outcome)


def _first_failures(frame: pd.DataFrame, failures: list[Failure]) -> pd.DataFrame:
    """`_check` and `_reason` of each failed row, indexed by its position, in position order."""
    import numpy as np
    import pandas as pd

    taken = np.zeros(len(frame), dtype=bool)
    parts = [pd.DataFrame({"_check": [], "_reason": []}, index=pd.Index([], dtype="int64"))]
    for failure in failures:
        rows = _rows(frame, failure)
        rows = rows[~taken[rows]]
        taken[rows] = True
        source = failure.check.source
        values = frame[source].iloc[rows].tolist() if source in frame else [None] * len(rows)
        reasons = [failure.check.reason(value) for value in values]
        parts.append(pd.DataFrame({"_check": failure.label, "_reason": reasons}, index=rows))
    return pd.concat(parts).sort_index()


def _rows(frame: pd.DataFrame, failure: Failure) -> np.ndarray:
    """Positions the failure applies to, sorted; for uniqueness, only the repeated copies."""
    import numpy as np

    if failure.positions is None:
        return np.arange(len(frame))
    rows = np.unique(np.asarray(failure.positions, dtype=np.int64))
    if failure.check.keep_first:
        repeated = frame[failure.check.source].iloc[rows].duplicated(keep="first")
        rows = rows[repeated.to_numpy()]
    return rows


def percent(share: float, threshold: float) -> str:
    """`share` as a percentage with enough decimals to tell it from `threshold` (1.001% vs 1.00%)."""
    for decimals in range(2, 6):
        if f"{share:.{decimals}%}" != f"{threshold:.{decimals}%}":
            break
    return f"{share:.{decimals}%}"


def exceeds(bad: int, total: int, threshold: float) -> bool:
    """Whether `bad` of `total` rows is a share above `threshold`: the batch fails."""
    return bad > 0 and bad / max(total, 1) > threshold


def enforce_threshold(
    table: str, bad: int, total: int, threshold: float, quarantine: str | None = None
) -> None:
    """Fail the batch when its share of bad rows is above `threshold`, warn when it is not zero.

    `quarantine` (where the bad rows were written) is named in the message so a reader can act.
    """
    if bad <= 0:
        return
    share = bad / max(total, 1)
    summary = f"{table}: {bad:,} of {total:,} rows ({percent(share, threshold)}) failed validation"
    where = f"; see {quarantine}" if quarantine else ""
    if exceeds(bad, total, threshold):
        raise ValidationFailed(f"{summary}, above the {threshold:.2%} threshold{where}")
    log.warning("%s, within the %.2f%% threshold%s", summary, threshold * 100, where)
