"""Continue reading: issues a user started recently and did not finish, most recent first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from models.base import TrainingData, require_fitted


class ContinueReadingModel:
    name = "continue_reading"

    def __init__(self, max_items: int = 3) -> None:
        self.max_items = max_items
        self.started = pd.DataFrame(columns=["user_id", "item_id", "read_fraction", "updated_at"])
        self.fitted = False

    def fit(self, data: TrainingData) -> Self:
        self.started = data.continue_reading.sort_values(
            ["user_id", "updated_at", "item_id"], ascending=[True, False, True]
        ).reset_index(drop=True)
        self.fitted = True
        return self

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        """Up to `min(n, max_items)` unfinished issues per user, newest first, scored 1 -> 0."""
        require_fitted(self.fitted, self.name)
        started = self.started[self.started["user_id"].isin(user_ids)]
        order = started.groupby("user_id").cumcount()
        kept = started[order < min(n, self.max_items)]
        percent = (kept["read_fraction"] * 100).round().astype(np.int64)
        return pd.DataFrame(
            {
                "user_id": kept["user_id"].to_numpy(),
                "item_id": kept["item_id"].to_numpy(),
                "score": 1.0 / (1.0 + order[order < min(n, self.max_items)].to_numpy()),
                "source": self.name,
                "reason_code": "continue_reading",
                "reason_ref": percent.to_numpy(),
            }
        )

    def save(self, directory: Path) -> None:
        require_fitted(self.fitted, self.name)
        directory.mkdir(parents=True, exist_ok=True)
        self.started.to_parquet(directory / "started.parquet", index=False)
        (directory / "params.json").write_text(json.dumps({"max_items": self.max_items}))

    @classmethod
    def load(cls, directory: Path) -> Self:
        model = cls(**json.loads((directory / "params.json").read_text()))
        model.started = pd.read_parquet(directory / "started.parquet")
        model.fitted = True
        return model
