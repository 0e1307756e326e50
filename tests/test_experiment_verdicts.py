"""The verdict rule of a readout (`pipelines.experiments.analysis._verdict`), case by case."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.experiments.analysis import (
    BETTER,
    GUARDRAIL_BREACHED,
    INCONCLUSIVE,
    NO_DIFFERENCE,
    WORSE,
    _verdict,
)
from pipelines.experiments.statistics import MetricResult

ALPHA = 0.05


def result(metric: str, role: str, effect: float, pvalue: float, sequential: bool) -> MetricResult:
    return MetricResult(
        metric=metric, role=role, control="a", treatment="b", control_value=1.0,  # type: ignore[arg-type]
        treatment_value=1.0 + effect, effect=effect, effect_ci=(effect - 0.1, effect + 0.1),
        rel_effect=effect, rel_effect_ci=(effect - 0.1, effect + 0.1), pvalue=pvalue,
        pvalue_adjusted=pvalue, variance_reduction=0.0, sequential_ci=(effect - 0.2, effect + 0.2),
        sequential_significant=sequential,
    )  # fmt: skip


CTR_UP = result("ctr", "primary", 0.2, 0.001, sequential=True)
FLAT_GUARD = result("unsubscribes_per_user", "guardrail", 0.0, 0.9, sequential=False)


@pytest.mark.parametrize(
    ("results", "finished", "expected"),
    [
        ([CTR_UP, FLAT_GUARD], False, BETTER),
        ([replace(CTR_UP, effect=-0.2), FLAT_GUARD], False, WORSE),
        # significant at the fixed horizon only: not before the planned end, decisive after it
        ([replace(CTR_UP, sequential_significant=False), FLAT_GUARD], False, INCONCLUSIVE),
        ([replace(CTR_UP, sequential_significant=False), FLAT_GUARD], True, BETTER),
        ([replace(CTR_UP, sequential_significant=False, pvalue=0.3), FLAT_GUARD], True, NO_DIFFERENCE),
        # more unsubscribes is worse, fewer is better; a fixed-horizon p alone does not count early
        ([CTR_UP, replace(FLAT_GUARD, effect=0.05, sequential_significant=True)], False,
         f"{GUARDRAIL_BREACHED} (unsubscribes_per_user)"),
        ([CTR_UP, replace(FLAT_GUARD, effect=-0.05, sequential_significant=True)], False, BETTER),
        ([CTR_UP, replace(FLAT_GUARD, effect=0.05, pvalue=0.01)], False, BETTER),
        ([CTR_UP, replace(FLAT_GUARD, effect=0.05, pvalue=0.01)], True,
         f"{GUARDRAIL_BREACHED} (unsubscribes_per_user)"),
        # a primary that should go down: fewer dismissals is the win
        ([result("dismissals_per_user", "primary", -0.3, 0.001, sequential=True)], False, BETTER),
    ],
)  # fmt: skip
def test_the_verdict(results: list[MetricResult], finished: bool, expected: str) -> None:
    assert _verdict(results, ALPHA, finished) == expected
