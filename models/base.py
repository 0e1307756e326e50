"""The one small interface every recommender implements, and the frame it answers with.

A model is fitted on `TrainingData` (the batch's feature tables) and answers `recommend` with
candidates: one row per (user, item) with a score, the source that proposed it and why, so the
blend and the published table can always say where an item came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, Self

import numpy as np
import pandas as pd

from inbo.errors import NotFitted

CANDIDATE_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "score",
    "source",
    "reason_code",
    "reason_ref",
)


@dataclass(frozen=True)
class TrainingData:
    """What a model may learn from: everything strictly before `as_of`.

    The interaction tables are enough for the candidate sources; the reranker also needs the raw
    events and subscriptions, and the content model the item embeddings.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    continue_reading: pd.DataFrame
    as_of: datetime
    events: pd.DataFrame | None = None
    subscriptions: pd.DataFrame | None = None
    embeddings: pd.DataFrame | None = None


class Scorer(Protocol):
    """What offline evaluation needs of a model: fit, then recommend."""

    def fit(self, data: TrainingData) -> Self: ...

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        """Up to `n` candidates per user, columns `CANDIDATE_COLUMNS`."""
        ...


class Recommender(Scorer, Protocol):
    """A model the pipeline saves, registers and loads back."""

    name: str

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Self: ...


def require_fitted(fitted: bool, model: str) -> None:
    """The one way a model refuses to answer before `fit` or `load`."""
    if not fitted:
        raise NotFitted(f"the {model} model is not fitted: call fit() or load() first")


def no_candidates() -> pd.DataFrame:
    return pd.DataFrame({column: [] for column in CANDIDATE_COLUMNS}).astype(
        {"user_id": "int64", "item_id": "int64", "score": "float64", "reason_ref": "Int64"}
    )
