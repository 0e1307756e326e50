"""Checking the readout's error rates on real logs: A/A re-saltings and injected mismatches.

Re-salting the assignment over the same exposure logs splits the same users anew: every split is
an A/A test (both halves saw the same mixture of lists), so the share of splits a test calls
significant is its false-positive rate. The fixed-horizon test should land on alpha, the
always-valid one at or below it however many looks each split gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.experiments.assignment import buckets
from pipelines.experiments.config import BUCKETS, Experiment
from pipelines.experiments.statistics import analyze

A, B = "a", "b"


def resalted(users: pd.DataFrame, salt: str) -> pd.DataFrame:
    """`users` split 50/50 anew by the assignment hash under `salt`."""
    halves = buckets(salt, users["user_id"].to_numpy()) < BUCKETS // 2
    return users.assign(variant=np.where(halves, A, B))


def without_share(users: pd.DataFrame, variant: str, share: float, seed: int) -> pd.DataFrame:
    """`users` with `share` of `variant`'s users dropped at random: a broken exposure log."""
    rows = np.flatnonzero(users["variant"].to_numpy() == variant)
    dropped = np.random.default_rng(seed).choice(rows, round(share * len(rows)), replace=False)
    return users.drop(index=users.index[dropped])


@dataclass(frozen=True)
class Calibration:
    """How often `splits` A/A tests were called significant, with Wilson 95% intervals."""

    splits: int
    looks: int
    fixed_rate: float
    fixed_interval: tuple[float, float]
    sequential_rate: float
    sequential_interval: tuple[float, float]


def aa_calibration(
    looks: Sequence[pd.DataFrame],
    experiment: Experiment,
    splits: int,
    planned_users: int | None = None,
) -> Calibration:
    """Re-salt `splits` times; the fixed-horizon test is read at the last look, the sequential
    one at every look (a split counts once it crosses at any), tuned to `planned_users` at
    every look as a running experiment's is. The rates are those of this data set's splits."""
    from pipelines.experiments.analysis import metric_specs

    primary = metric_specs(experiment)[:1]
    fixed = sequential = 0
    for split in range(splits):
        salt = f"aa-{split}"
        crossed = False
        for number, users in enumerate(looks, 1):
            (result,) = analyze(
                resalted(users, salt), primary, A, B, experiment.alpha,
                planned_users,
            )  # fmt: skip
            crossed = crossed or result.sequential_significant
            if number == len(looks):
                fixed += result.pvalue < experiment.alpha
        sequential += crossed

    return Calibration(
        splits,
        len(looks),
        fixed / splits,
        wilson(fixed, splits),
        sequential / splits,
        wilson(sequential, splits),
    )


def wilson(count: int, trials: int) -> tuple[float, float]:
    """The Wilson 95% interval of a rate of `count` in `trials` (scipy)."""
    from scipy.stats import binomtest

    interval = binomtest(count, trials).proportion_ci(method="wilson")
    return (float(interval.low), float(interval.high))
