"""The benchmark datasets by name, in a module without heavy imports: `inbo evaluate --dataset`
offers them as choices before pandas loads."""

from __future__ import annotations

from enum import StrEnum


class Dataset(StrEnum):
    """A dataset `run_benchmark` evaluates every model family on."""

    DEMO = "demo"
    """The lake's newest validated batch, through the platform's time split."""
    MOVIELENS_100K = "movielens-100k"
    """Microsoft Recommenders' MovieLens-100k protocol."""
    MIND = "mind"
    """A MIND-format folder through the platform's time split."""
