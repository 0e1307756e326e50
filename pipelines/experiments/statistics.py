"""The statistics of an A/B readout: pure functions over a frame with one row per exposed user.

The frame has a `variant` column and one numeric column per quantity a metric needs (`clicks`,
`impressions`, `pre_clicks`, ...). A metric is a mean per user (`reads` per exposed user) or a
ratio of two means (`clicks / impressions`, the CTR): a ratio is analysed per user with the
delta method, never per impression, because one user's impressions are not independent trials.

What comes from where:

- fixed-horizon tests, CUPED, power and the Benjamini-Hochberg adjustment are tea-tasting's
  (`tt.RatioOfMeans`, `solve_power`, `tt.adjust_fdr`): Welch-type standard errors (no pooled
  variance) with the normal distribution (`use_t=False`), so that the standard error can be read
  back exactly from the confidence interval; at the thousands of users an experiment has, the
  t and the normal quantiles agree to three decimals;
- the sample ratio check is scipy's chi-square goodness of fit, for any number of variants;
- the sequential readout is ported: the two-sided asymptotic confidence sequence of Waudby-Smith,
  Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic confidence
  sequences" (Annals of Statistics 2024, arXiv:2103.06476), the Gaussian-mixture boundary with
  its mixing parameter tuned to the planned sample size as in Howard, Ramdas, McAuliffe and Sekhon
  (2021) and their `confseq` package (`TwoSidedNormalMixture::best_rho`).

tea-tasting is imported inside the functions (it takes about two seconds), so importing this
module stays cheap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

VARIANT_COL = "variant"
DEFAULT_SRM_THRESHOLD = 0.001
"""A sample ratio p-value below this stops the readout: something drops or duplicates exposures."""

Role = Literal["primary", "secondary", "guardrail"]
ROLES: tuple[Role, ...] = get_args(Role)
_PLAIN = "{} (no covariates)"  # the same metric analysed without CUPED, to measure its gain


@dataclass(frozen=True)
class MetricSpec:
    """What to measure per exposed user: `numerator` per user, or `numerator / denominator`.

    `covariates` name the pre-period columns of the same quantities, `(numerator,)` for a mean,
    `(numerator, denominator)` for a ratio; empty means no CUPED. Only secondary metrics are
    adjusted for multiplicity: the primary metric is the one decision the test is powered for,
    and a guardrail must not get easier to pass the more guardrails there are.
    """

    name: str
    numerator: str
    denominator: str | None = None
    covariates: tuple[str, ...] = ()
    role: Role = "secondary"

    def __post_init__(self) -> None:
        expected = 1 if self.denominator is None else 2
        if self.covariates and len(self.covariates) != expected:
            kind = "a mean" if self.denominator is None else "a ratio"
            raise ValueError(
                f"metric {self.name!r} is {kind}: give {expected} covariate column(s) or none, "
                f"got {self.covariates}"
            )
        if self.role not in ROLES:
            raise ValueError(
                f"metric {self.name!r}: role must be one of {ROLES}, got {self.role!r}"
            )

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column of the users frame this metric reads."""
        return tuple(c for c in (self.numerator, self.denominator, *self.covariates) if c)


@dataclass(frozen=True)
class MetricResult:
    """One metric's readout, treatment against control.

    `control_value`/`treatment_value` are the raw per-variant values (a ratio of sums for a
    ratio metric); the effects, their intervals and the p-value are CUPED-adjusted when the
    metric has covariates, and NaN when the metric does not vary at all. `effect_ci` holds at
    the planned horizon only; `sequential_ci` holds at every look, however often one looks.
    """

    metric: str
    role: Role
    control: str
    treatment: str
    control_value: float
    treatment_value: float
    effect: float
    effect_ci: tuple[float, float]
    rel_effect: float
    rel_effect_ci: tuple[float, float]
    pvalue: float
    pvalue_adjusted: float
    variance_reduction: float
    sequential_ci: tuple[float, float]
    sequential_significant: bool


@dataclass(frozen=True)
class SampleRatio:
    """Observed exposures per variant against the configured split (`sample_ratio`)."""

    counts: dict[str, int]
    expected_shares: dict[str, float]
    statistic: float
    pvalue: float
    mismatch: bool


class _Estimate(Protocol):
    """The fields of tea-tasting's `MeanResult` this module reads."""

    control: float
    treatment: float
    effect_size: float
    effect_size_ci_lower: float
    effect_size_ci_upper: float
    rel_effect_size: float
    rel_effect_size_ci_lower: float
    rel_effect_size_ci_upper: float
    pvalue: float


def sample_ratio(
    counts: Mapping[str, int],
    weights: Mapping[str, float],
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> SampleRatio:
    """Chi-square goodness of fit of exposures per variant to the weights (any scale, any count).

    A mismatch means the assignment or the exposure log is broken; no metric of such an
    experiment can be trusted, whatever its p-value.
    """
    from scipy.stats import chisquare

    if set(counts) != set(weights) or len(weights) < 2:
        raise ValueError(
            f"counts {sorted(counts)} and weights {sorted(weights)} must name the same 2+ variants"
        )
    if any(w <= 0 for w in weights.values()):
        raise ValueError(f"weights must be positive, got {dict(weights)}")
    names = sorted(weights)
    total_weight = sum(weights.values())
    shares = {v: weights[v] / total_weight for v in names}
    observed = [counts[v] for v in names]
    expected = [sum(observed) * shares[v] for v in names]
    statistic, pvalue = chisquare(observed, expected)
    mismatch = bool(pvalue < threshold)
    return SampleRatio(
        {v: int(counts[v]) for v in names}, shares, float(statistic), float(pvalue), mismatch
    )


def benjamini_hochberg(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Benjamini-Hochberg adjusted p-values by name (tea-tasting's `adjust_fdr`)."""
    import tea_tasting as tt
    from tea_tasting.experiment import ExperimentResult

    if not pvalues:
        return {}
    # adjust_fdr reads only "pvalue" from each metric's result, and accepts plain dicts.
    results = ExperimentResult({name: {"pvalue": p} for name, p in pvalues.items()})
    (adjusted,) = tt.adjust_fdr(results).values()
    return {name: float(adjusted[name]["pvalue_adj"]) for name in pvalues}


def confidence_sequence_halfwidth(
    standard_error: float, n: int, alpha: float, planned_n: int
) -> float:
    """Half-width of the two-sided asymptotic confidence sequence at `n` observations.

    `C_n = estimate ± se * sqrt(2 (n rho² + 1) / (n rho²) * log(sqrt(n rho² + 1) / alpha))`
    (Waudby-Smith et al. 2024, with se = sigma / sqrt(n)): valid at every n at once,
    so the readout may be looked at daily. `rho² = (2 log(1/alpha) + log(1 + 2 log(1/alpha))) /
    planned_n` makes it tightest at the planned sample size (confseq's `best_rho`).
    """
    if n < 1 or planned_n < 1:
        raise ValueError(f"n and planned_n must be at least 1, got {n} and {planned_n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    log_inv_alpha = math.log(1 / alpha)
    rho2 = (2 * log_inv_alpha + math.log(1 + 2 * log_inv_alpha)) / planned_n
    n_rho2 = n * rho2
    return standard_error * math.sqrt(
        2 * (n_rho2 + 1) / n_rho2 * math.log(math.sqrt(n_rho2 + 1) / alpha)
    )


def minimum_detectable_effect(
    pre_period: pd.DataFrame,
    metric: MetricSpec,
    users_per_variant: int,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The relative lift of `metric` a two-variant test with `users_per_variant` detects.

    Estimated from per-user values of a period before the test (tea-tasting's `solve_power`,
    two-sided); with covariates in `metric` the frame must hold them too and the MDE is CUPED's.
    An experiment whose planned MDE is below this cannot reach it in its planned length.
    """
    _check_columns(pre_period, [metric])
    model = _tea_metric(metric, cuped=True, alpha=alpha, power=power, n_obs=2 * users_per_variant)
    (solved,) = model.solve_power(pre_period, "rel_effect_size")
    return float(solved.rel_effect_size)


def analyze(
    users: pd.DataFrame,
    metrics: Sequence[MetricSpec],
    control: str,
    treatment: str,
    alpha: float = 0.05,
    planned_users: int | None = None,
) -> list[MetricResult]:
    """Every metric's readout of `treatment` against `control`, in the order of `metrics`.

    `planned_users` is the planned number of users of the two variants together at the fixed
    horizon: the confidence sequence is tightest there (default: the users analysed now).
    """
    _check_columns(users, metrics)
    pair = users[users[VARIANT_COL].isin([control, treatment])]
    present = set(pair[VARIANT_COL].unique())
    if missing := [v for v in (control, treatment) if v not in present]:
        raise ValueError(f"no users of variant(s) {missing} in the frame")
    fitted = _fit(pair, metrics, control, alpha)
    adjusted = benjamini_hochberg(
        {s.name: float(fitted[s.name].pvalue) for s in metrics if s.role == "secondary"}
    )
    n = len(pair)
    log.debug("analysing %s against %s: %d users, %d metrics", treatment, control, n, len(metrics))
    return [
        _readout(
            spec,
            fitted[spec.name],
            fitted[_PLAIN.format(spec.name) if spec.covariates else spec.name],
            control=control,
            treatment=treatment,
            pvalue_adjusted=adjusted.get(spec.name),
            alpha=alpha,
            n=n,
            planned_n=n if planned_users is None else planned_users,
        )
        for spec in metrics
    ]


def _check_columns(users: pd.DataFrame, metrics: Sequence[MetricSpec]) -> None:
    names = [s.name for s in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"metric names repeat: {names}")
    needed = {c for s in metrics for c in s.columns}
    if missing := sorted(needed - set(users.columns)):
        raise ValueError(f"the users frame lacks column(s) {missing}")


def _tea_metric(
    spec: MetricSpec,
    *,
    cuped: bool,
    alpha: float,
    power: float | None = None,
    n_obs: int | None = None,
) -> Any:
    """tea-tasting's metric for `spec` (a `RatioOfMeans` without denominator is its `Mean`)."""
    import tea_tasting as tt

    numer_covariate, denom_covariate = (*spec.covariates, None, None)[:2] if cuped else (None, None)
    return tt.RatioOfMeans(
        spec.numerator,
        spec.denominator,
        numer_covariate,
        denom_covariate,
        alternative="two-sided",
        confidence_level=1 - alpha,
        equal_var=False,
        use_t=False,
        alpha=alpha,
        power=power,
        n_obs=n_obs,
    )


def _fit(
    pair: pd.DataFrame, metrics: Sequence[MetricSpec], control: str, alpha: float
) -> Mapping[str, _Estimate]:
    """tea-tasting's analysis of every metric, and of each CUPED metric once more without."""
    import tea_tasting as tt

    models = {s.name: _tea_metric(s, cuped=True, alpha=alpha) for s in metrics}
    models |= {
        _PLAIN.format(s.name): _tea_metric(s, cuped=False, alpha=alpha)
        for s in metrics
        if s.covariates
    }
    # A metric that never varies (no unsubscribes at all) has no test: NaN, warned in `_readout`.
    with np.errstate(invalid="ignore", divide="ignore"):
        fitted: Mapping[str, _Estimate] = tt.Experiment(models, variant=VARIANT_COL).analyze(
            pair, control=control
        )
    return fitted


def _standard_error(estimate: _Estimate, alpha: float) -> float:
    """The effect's standard error, read back from tea-tasting's normal-based interval."""
    from scipy.stats import norm

    halfwidth = (estimate.effect_size_ci_upper - estimate.effect_size_ci_lower) / 2
    return float(halfwidth / norm.ppf(1 - alpha / 2))


def _readout(
    spec: MetricSpec,
    fitted: _Estimate,
    plain: _Estimate,
    *,
    control: str,
    treatment: str,
    pvalue_adjusted: float | None,
    alpha: float,
    n: int,
    planned_n: int,
) -> MetricResult:
    se = _standard_error(fitted, alpha)
    if not se > 0:
        log.warning(
            "metric %s does not vary among the users of %s and %s: it has no test (NaN); "
            "check its columns before reading it as unchanged",
            spec.name,
            control,
            treatment,
        )
    reduction = 1 - (se / _standard_error(plain, alpha)) ** 2 if spec.covariates else 0.0
    effect = float(fitted.effect_size)
    halfwidth = confidence_sequence_halfwidth(se, n, alpha, planned_n)
    lower, upper = effect - halfwidth, effect + halfwidth
    pvalue = float(fitted.pvalue)
    return MetricResult(
        metric=spec.name,
        role=spec.role,
        control=control,
        treatment=treatment,
        # tea-tasting's CUPED "control"/"treatment" are covariate-adjusted: report the raw ones.
        control_value=float(plain.control),
        treatment_value=float(plain.treatment),
        effect=effect,
        effect_ci=(float(fitted.effect_size_ci_lower), float(fitted.effect_size_ci_upper)),
        rel_effect=float(fitted.rel_effect_size),
        rel_effect_ci=(
            float(fitted.rel_effect_size_ci_lower),
            float(fitted.rel_effect_size_ci_upper),
        ),
        pvalue=pvalue,
        pvalue_adjusted=pvalue if pvalue_adjusted is None else pvalue_adjusted,
        variance_reduction=float(reduction),
        sequential_ci=(lower, upper),
        sequential_significant=lower > 0 or upper < 0,
    )
