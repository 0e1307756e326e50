"""The A/B statistics: hand-computed cases, a published reference value and small Monte Carlos.

Every simulation is seeded, so a run is deterministic; each tolerance says how many binomial or
sampling standard deviations it allows, so a correct implementation does not sit near its edge.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from pipelines.experiments.statistics import (
    MetricSpec,
    analyze,
    benjamini_hochberg,
    confidence_sequence_halfwidth,
    minimum_detectable_effect,
    sample_ratio,
)

CTR = MetricSpec("ctr", "clicks", "impressions", ("pre_clicks", "pre_impressions"), "primary")
CTR_PLAIN = MetricSpec("ctr", "clicks", "impressions", role="primary")
Z_975 = float(norm.ppf(0.975))


def clustered_users(
    rng: np.random.Generator, per_arm: int, lift: float = 1.0, runs: int | None = None
) -> dict[str, np.ndarray]:
    """Users with many impressions whose clicks share one propensity: clicks cluster by user.

    Impressions are geometric with mean 30; a user's click propensity is Beta(0.5, 9.5) (mean
    5%, intra-user correlation 1/11), so one user's impressions are far from independent trials.
    A tenth of the users are new: no pre-period impressions. Shape (runs, users) when `runs`.
    """
    shape = (2 * per_arm,) if runs is None else (runs, 2 * per_arm)
    treated = np.arange(2 * per_arm) >= per_arm
    propensity = rng.beta(0.5, 9.5, shape)
    impressions = rng.geometric(1 / 30, shape)
    pre_impressions = rng.geometric(1 / 30, shape) * (rng.random(shape) > 0.1)
    return {
        "variant": np.where(treated, "treatment", "control"),
        "impressions": impressions,
        "clicks": rng.binomial(impressions, np.minimum(propensity * np.where(treated, lift, 1), 1)),
        "pre_impressions": pre_impressions,
        "pre_clicks": rng.binomial(pre_impressions, propensity),
    }


def naive_per_impression(clicks: np.ndarray, impressions: np.ndarray, per_arm: int):
    """Wald two-proportion test treating every impression as an independent trial: (d, se)."""
    c_clicks, t_clicks = clicks[..., :per_arm].sum(-1), clicks[..., per_arm:].sum(-1)
    c_imps, t_imps = impressions[..., :per_arm].sum(-1), impressions[..., per_arm:].sum(-1)
    p_c, p_t = c_clicks / c_imps, t_clicks / t_imps
    se = np.sqrt(p_c * (1 - p_c) / c_imps + p_t * (1 - p_t) / t_imps)
    return p_t - p_c, se


# --- sample ratio ---------------------------------------------------------------------------


def test_sample_ratio_matches_hand_computed_chi_square() -> None:
    """60/40 against 50/50: (10²/50)·2 = 4.0 on 1 df, p = P(|Z| > 2) = 0.0455003.
    30/50/20 against 1:2:1 (expected 25/50/25): 25/25 + 0 + 25/25 = 2.0 on 2 df, p = e^-1."""
    two = sample_ratio({"a": 60, "b": 40}, {"a": 1, "b": 1})
    assert two.statistic == pytest.approx(4.0)
    assert two.pvalue == pytest.approx(0.0455003, abs=1e-7)

    three = sample_ratio({"a": 30, "b": 50, "c": 20}, {"a": 0.25, "b": 0.5, "c": 0.25})
    assert three.statistic == pytest.approx(2.0)
    assert three.pvalue == pytest.approx(math.exp(-1))
    assert three.expected_shares == {"a": 0.25, "b": 0.5, "c": 0.25}
    # weights need not sum to one
    assert sample_ratio({"a": 30, "b": 50, "c": 20}, {"a": 1, "b": 2, "c": 1}) == three


def test_sample_ratio_even_split_is_not_flagged() -> None:
    result = sample_ratio({"control": 10_000, "treatment": 10_000}, {"control": 1, "treatment": 1})
    assert (result.statistic, result.pvalue, result.mismatch) == (0.0, 1.0, False)


def test_sample_ratio_three_percent_loss() -> None:
    """One arm losing 3% of its exposures. At 20,000 per arm (20,000 vs 19,400) the statistic
    is 2·300²/19,700 = 9.137, p = 0.0025: *not* below the default 0.001, which needs about
    24,000 users per arm to catch a 3% loss. At 50,000 per arm (50,000 vs 48,500):
    2·750²/49,250 = 22.84, p ≈ 2e-6, flagged."""
    even = {"control": 1.0, "treatment": 1.0}
    at_20k = sample_ratio({"control": 20_000, "treatment": 19_400}, even)
    assert at_20k.statistic == pytest.approx(2 * 300**2 / 19_700)
    assert 0.001 < at_20k.pvalue < 0.003 and not at_20k.mismatch

    at_50k = sample_ratio({"control": 50_000, "treatment": 48_500}, even)
    assert at_50k.statistic == pytest.approx(2 * 750**2 / 49_250)
    assert at_50k.pvalue < 1e-5 and at_50k.mismatch


def test_sample_ratio_uneven_weights() -> None:
    """9,000/1,000 is what a 90/10 split expects; 9,100/900 is off by 100 each way:
    100²/9,000 + 100²/1,000 = 11.11 on 1 df, p = 0.00086 (flagged)."""
    weights = {"control": 90, "treatment": 10}
    assert not sample_ratio({"control": 9_000, "treatment": 1_000}, weights).mismatch
    assert sample_ratio(
        {"control": 9_000, "treatment": 1_000}, {"control": 1, "treatment": 1}
    ).mismatch

    off = sample_ratio({"control": 9_100, "treatment": 900}, weights)
    assert off.statistic == pytest.approx(100**2 / 9_000 + 100**2 / 1_000)
    assert off.mismatch


def test_sample_ratio_needs_the_same_variants() -> None:
    with pytest.raises(ValueError, match="same"):
        sample_ratio({"control": 10, "treatment": 10}, {"control": 1, "other": 1})


# --- delta method ---------------------------------------------------------------------------


def test_delta_method_interval_is_wider_than_per_impression_on_clustered_users() -> None:
    rng = np.random.default_rng(7)
    users = clustered_users(rng, per_arm=5_000)
    (ctr,) = analyze(pd.DataFrame(users), [CTR_PLAIN], "control", "treatment")
    _, naive_se = naive_per_impression(users["clicks"], users["impressions"], 5_000)

    delta_width = ctr.effect_ci[1] - ctr.effect_ci[0]
    # intra-user correlation 1/11 at ~60 impressions per user (impression-weighted): a design
    # effect of ~6, so the honest interval is ~2.5 times the per-impression one
    assert delta_width > 1.8 * (2 * Z_975 * naive_se)


def test_delta_method_keeps_its_false_positive_rate_where_per_impression_does_not() -> None:
    """300 A/A tests of 1,000 clustered users per arm. The binomial sd of a 5% rate over 300
    runs is 1.26%, so 5% ± 3% allows 2.4 sd (over 1,500 runs, seeds 11-15, the rate was 5.1%);
    the per-impression test rejects ~40% of them."""
    runs, per_arm = 300, 1_000
    users = clustered_users(np.random.default_rng(15), per_arm, runs=runs)
    rejected = [
        analyze(
            pd.DataFrame({k: v if k == "variant" else v[i] for k, v in users.items()}),
            [CTR_PLAIN],
            "control",
            "treatment",
        )[0].pvalue
        < 0.05
        for i in range(runs)
    ]
    d, se = naive_per_impression(users["clicks"], users["impressions"], per_arm)

    assert abs(np.mean(rejected) - 0.05) <= 0.03
    assert np.mean(np.abs(d) > Z_975 * se) > 0.2


# --- CUPED ----------------------------------------------------------------------------------


def correlated_reads(rng: np.random.Generator, per_arm: int, effect: float, rho: float = 0.7):
    """Reads per user with a pre-period covariate of correlation `rho`, plus `effect` in treatment."""
    pre = rng.standard_normal(2 * per_arm)
    noise = rng.standard_normal(2 * per_arm)
    treated = np.arange(2 * per_arm) >= per_arm
    reads = 3 + rho * pre + math.sqrt(1 - rho**2) * noise + effect * treated
    return pd.DataFrame(
        {"variant": np.where(treated, "treatment", "control"), "reads": reads, "pre_reads": 3 + pre}
    )


READS = MetricSpec("reads_per_user", "reads", covariates=("pre_reads",))


def test_cuped_removes_rho_squared_of_the_variance() -> None:
    """With correlation 0.7 CUPED removes ρ² = 0.49 of the effect's variance. Over 20,000 users
    the sampling sd of ρ̂² is about 2ρ(1-ρ²)/√n = 0.005, so ±0.03 allows 6 sd."""
    users = correlated_reads(np.random.default_rng(3), per_arm=10_000, effect=0.05)
    (reads,) = analyze(users, [READS], "control", "treatment")

    assert reads.variance_reduction == pytest.approx(0.49, abs=0.03)
    assert reads.effect_ci[0] < 0.05 < reads.effect_ci[1]


def test_cuped_estimate_is_unbiased() -> None:
    """Over 30 datasets the mean CUPED estimate is within 3 standard errors of the mean
    (se / √30) of the injected effect; CUPED's adjustment must not pull it anywhere."""
    rng = np.random.default_rng(5)
    results = [
        analyze(correlated_reads(rng, per_arm=2_000, effect=0.1), [READS], "control", "treatment")[
            0
        ]
        for _ in range(30)
    ]
    estimates = np.array([r.effect for r in results])
    se = np.mean([(r.effect_ci[1] - r.effect_ci[0]) / (2 * Z_975) for r in results])
    assert abs(estimates.mean() - 0.1) < 3 * se / math.sqrt(30)
    assert np.mean([r.variance_reduction for r in results]) == pytest.approx(0.49, abs=0.05)


def test_metric_spec_checks_its_covariates() -> None:
    with pytest.raises(ValueError, match="ratio"):
        MetricSpec("ctr", "clicks", "impressions", ("pre_clicks",))
    with pytest.raises(ValueError, match="mean"):
        MetricSpec("reads", "reads", covariates=("pre_reads", "pre_impressions"))


# --- multiplicity ---------------------------------------------------------------------------


def test_benjamini_hochberg_matches_hand_computed_values() -> None:
    """m = 4, sorted 0.01, 0.03, 0.04, 0.20 give m·p/rank = 0.04, 0.06, 0.0533, 0.20; the
    step-up takes the running minimum from the top: 0.04, 0.0533, 0.0533, 0.20."""
    adjusted = benjamini_hochberg({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.20})
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.16 / 3, "c": 0.16 / 3, "d": 0.20})


def test_analyze_adjusts_secondary_metrics_only() -> None:
    rng = np.random.default_rng(9)
    users = pd.DataFrame(clustered_users(rng, per_arm=3_000, lift=1.05))
    users["reads"] = rng.binomial(users["clicks"], 0.5)
    users["dismissals"] = rng.poisson(0.3, len(users))
    metrics = [
        CTR_PLAIN,
        MetricSpec("reads_per_user", "reads"),
        MetricSpec("read_rate", "reads", "impressions"),
        MetricSpec("dismissals_per_user", "dismissals", role="guardrail"),
    ]
    ctr, reads, read_rate, dismissals = analyze(users, metrics, "control", "treatment")

    low, high = sorted([reads.pvalue, read_rate.pvalue])
    expected = {low: min(2 * low, high), high: high}  # BH for m = 2
    assert reads.pvalue_adjusted == pytest.approx(expected[reads.pvalue])
    assert read_rate.pvalue_adjusted == pytest.approx(expected[read_rate.pvalue])
    assert ctr.pvalue_adjusted == ctr.pvalue
    assert dismissals.pvalue_adjusted == dismissals.pvalue


# --- confidence sequence --------------------------------------------------------------------


def test_confidence_sequence_matches_confseq() -> None:
    """Reference: gostevehoward/confseq, test/uniform_boundaries_unittest.cpp,
    TEST(MixtureTest, TestTwoSidedNormalMixture) ("all target values are from a reference
    implementation in R"): `TwoSidedNormalMixture::best_rho(100, 0.05) = 12.60056` and
    `TwoSidedNormalMixture(100, 0.05).bound(100, log(1/0.05)) = 30.35209`, the boundary on a
    sum of 100 unit-variance observations. As a mean that is 0.3035209 at se = 1/√100 = 0.1;
    it scales with se. (The paper's exact Lambert-W optimum of ρ would give 0.3035122.)"""
    assert confidence_sequence_halfwidth(0.1, 100, 0.05, 100) == pytest.approx(0.3035209, abs=1e-7)
    assert confidence_sequence_halfwidth(0.2, 100, 0.05, 100) == pytest.approx(0.6070418, abs=2e-7)


def test_confidence_sequence_is_tightest_at_the_planned_size() -> None:
    at_plan = confidence_sequence_halfwidth(1.0, 10_000, 0.05, 10_000)
    assert at_plan < confidence_sequence_halfwidth(1.0, 10_000, 0.05, 2_500)
    assert at_plan < confidence_sequence_halfwidth(1.0, 10_000, 0.05, 40_000)


@pytest.mark.parametrize("n", [10, 100, 10_000, 1_000_000])
@pytest.mark.parametrize("planned_n", [100, 10_000])
def test_confidence_sequence_is_wider_than_the_fixed_horizon_interval(
    n: int, planned_n: int
) -> None:
    assert confidence_sequence_halfwidth(0.3, n, 0.05, planned_n) > Z_975 * 0.3


def test_confidence_sequence_survives_daily_looks() -> None:
    """500 A/A tests, 20 daily looks of 50 more users per arm, skewed (exponential) outcomes.
    The binomial sd of a 5% rate over 500 runs is ~1%, so alpha + 0.02 allows 2 sd; repeated
    fixed-horizon looks reject in ~25% of the runs."""
    runs, looks, daily = 500, 20, 50
    rng = np.random.default_rng(1)
    day = rng.exponential(1.0, (runs, looks, 2, daily))
    sums, squares = day.sum(-1).cumsum(1), (day**2).sum(-1).cumsum(1)
    per_arm = daily * np.arange(1, looks + 1)[None, :, None]
    means = sums / per_arm
    variances = (squares - per_arm * means**2) / (per_arm - 1)
    effect = means[..., 1] - means[..., 0]
    se = np.sqrt((variances / per_arm).sum(-1))
    widths = np.array(
        [
            confidence_sequence_halfwidth(1.0, 2 * daily * k, 0.05, 2 * daily * looks)
            for k in range(1, looks + 1)
        ]
    )

    ever_excluded = (np.abs(effect) > widths * se).any(axis=1).mean()
    ever_significant = (np.abs(effect) > Z_975 * se).any(axis=1).mean()
    assert ever_excluded <= 0.05 + 0.02
    assert ever_significant > 0.15


# --- power ----------------------------------------------------------------------------------


def test_minimum_detectable_effect_matches_the_textbook_formula() -> None:
    """(z_0.975 + z_0.8) · √(2σ²/n) / μ for a mean; with a covariate of correlation 0.7,
    CUPED's MDE is that times √(1 - ρ²)."""
    pre_period = correlated_reads(np.random.default_rng(2), per_arm=5_000, effect=0.0)
    sigma, mu, n = pre_period["reads"].std(), pre_period["reads"].mean(), 4_000
    textbook = (Z_975 + norm.ppf(0.8)) * math.sqrt(2 * sigma**2 / n) / mu

    plain = minimum_detectable_effect(pre_period, MetricSpec("reads", "reads"), n)
    cuped = minimum_detectable_effect(pre_period, READS, n)
    assert plain == pytest.approx(textbook, rel=0.02)
    assert cuped == pytest.approx(textbook * math.sqrt(1 - 0.7**2), rel=0.05)


# --- the whole readout ----------------------------------------------------------------------


def test_analyze_finds_an_injected_ctr_lift() -> None:
    users = pd.DataFrame(clustered_users(np.random.default_rng(4), per_arm=5_000, lift=1.2))
    (ctr,) = analyze(users, [CTR], "control", "treatment", planned_users=20_000)

    sums = users.groupby("variant")[["clicks", "impressions"]].sum()
    assert ctr.control_value == pytest.approx(
        sums.loc["control", "clicks"] / sums.loc["control", "impressions"], rel=1e-12
    )
    assert ctr.treatment_value == pytest.approx(
        sums.loc["treatment", "clicks"] / sums.loc["treatment", "impressions"], rel=1e-12
    )
    assert ctr.pvalue < 0.05
    assert ctr.rel_effect_ci[0] < 0.2 < ctr.rel_effect_ci[1]
    assert ctr.variance_reduction > 0.1  # pre-period clicks share the user's propensity

    se = (ctr.effect_ci[1] - ctr.effect_ci[0]) / (2 * Z_975)
    halfwidth = confidence_sequence_halfwidth(se, 10_000, 0.05, 20_000)
    assert ctr.sequential_ci == pytest.approx((ctr.effect - halfwidth, ctr.effect + halfwidth))
    assert ctr.sequential_significant


def test_a_metric_that_never_varies_has_no_test() -> None:
    users = pd.DataFrame(clustered_users(np.random.default_rng(6), per_arm=500))
    users["unsubscribes"] = 0
    (unsubscribes,) = analyze(
        users,
        [MetricSpec("unsubscribes", "unsubscribes", role="guardrail")],
        "control",
        "treatment",
    )
    assert math.isnan(unsubscribes.pvalue)
    assert not unsubscribes.sequential_significant
