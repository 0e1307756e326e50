"""Numpy helpers the simulator's modules share: time arithmetic and row-wise draws."""

from __future__ import annotations

from typing import Any

import numpy as np


def seconds(values: Any) -> np.ndarray:
    """Float seconds as microsecond timedeltas."""
    return np.round(np.asarray(values, dtype=float) * 1e6).astype("timedelta64[us]")


def sample_rows(rng: np.random.Generator, cumulative: np.ndarray) -> np.ndarray:
    """Column index drawn per row of a row-wise cumulative distribution."""
    draws = rng.random(len(cumulative))[:, None]
    return np.minimum((cumulative < draws).sum(axis=1), cumulative.shape[1] - 1)
