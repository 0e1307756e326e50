"""The reranker: LightGBM LambdaRank over the candidates' ranking features, one group per user.

Candidate generation proposes a few hundred items per user from several sources whose scores are
not comparable; the reranker learns, from what users were actually shown and engaged with, how to
weigh those scores against item, user and (user, item) features (`features.ranking.FEATURES`).
It is saved as LightGBM's own text model plus a small JSON of params and a few rows of its
training inputs (the input example MLflow shows beside the registered booster), so any process
with lightgbm can load it, and it explains a score feature by feature (`contributions`) for
`inbo explain USER ITEM`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from features.ranking import FEATURES, LABEL
from inbo.errors import NoPositiveExamples
from models.base import require_fitted

log = logging.getLogger(__name__)

MODEL_FILE = "model.txt"
PARAMS_FILE = "params.json"
EXAMPLE_FILE = "example.json"
EXAMPLE_ROWS = 5
"""Training rows kept as the model's input example: real feature values, no user or item ids."""

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 20,
    "random_state": 0,
    "n_jobs": 1,
    "verbosity": -1,
}
"""LGBMRanker parameters; any of them can be overridden through `Reranker(**params)`."""

BIAS = "bias"
"""The column of `contributions` holding the model's expected score before any feature."""


class Reranker:
    """LambdaRank over `FEATURES`; `fit` on `training_examples`, `rerank` tonight's candidates."""

    name = "reranker"

    def __init__(self, features: tuple[str, ...] = FEATURES, **params: Any) -> None:
        self.features = tuple(features)
        self.params = {**DEFAULT_PARAMS, **params}
        self.booster: Any = None  # lightgbm.Booster once fitted or loaded
        self.example = pd.DataFrame(columns=list(self.features), dtype="float64")

    def fit(self, examples: pd.DataFrame) -> Self:
        """Learn from labelled examples (`user_id`, `FEATURES`, `label`); one group per user.

        Users whose every label is 0 are dropped: LambdaRank learns nothing from them.
        """
        import lightgbm as lgb

        ordered = useful_groups(examples)
        inputs = feature_matrix(ordered, self.features)
        ranker = lgb.LGBMRanker(**self.params)
        ranker.fit(
            inputs,
            ordered[LABEL].to_numpy(dtype=np.int32),
            group=ordered.groupby("user_id", sort=False).size().to_numpy(),
        )
        self.booster = ranker.booster_
        self.example = inputs.head(EXAMPLE_ROWS).reset_index(drop=True)
        log.info(
            "reranker fitted on %d rows, %d users, %d positive",
            len(ordered),
            ordered["user_id"].nunique(),
            int((ordered[LABEL] > 0).sum()),
        )
        return self

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's raw score per row of `frame` (higher ranks first; comparable within a user)."""
        scores = self._fitted().predict(feature_matrix(frame, self.features))
        return np.asarray(scores, dtype=np.float64)

    def rerank(self, candidates: pd.DataFrame, n: int) -> pd.DataFrame:
        """Each user's top `n` candidates by score: input columns plus `score` and `rank` (1 = best)."""
        scored = candidates.assign(score=self.score(candidates))
        scored = scored.sort_values(
            ["user_id", "score", "item_id"], ascending=[True, False, True], kind="stable"
        )
        top = scored[scored.groupby("user_id").cumcount() < n]
        return top.assign(rank=top.groupby("user_id").cumcount() + 1).reset_index(drop=True)

    def feature_importance(self) -> pd.DataFrame:
        """Total gain and split count per feature, highest gain first, with its share of the gain."""
        booster = self._fitted()
        gain = booster.feature_importance(importance_type="gain")
        table = pd.DataFrame(
            {
                "feature": list(self.features),
                "gain": gain,
                "share": gain / gain.sum() if gain.sum() > 0 else gain,
                "splits": booster.feature_importance(importance_type="split"),
            }
        )
        return table.sort_values(["gain", "feature"], ascending=[False, True], ignore_index=True)

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per row, each feature's additive share of the score (SHAP values) plus `bias`.

        Each row sums to `score` for that row: this is what `inbo explain USER ITEM` shows.
        """
        values = self._fitted().predict(feature_matrix(frame, self.features), pred_contrib=True)
        return pd.DataFrame(values, columns=[*self.features, BIAS], index=frame.index)

    def save(self, directory: Path) -> None:
        """LightGBM's text model, the params and the input example: loadable by `Reranker.load`."""
        booster = self._fitted()
        directory.mkdir(parents=True, exist_ok=True)
        booster.save_model(str(directory / MODEL_FILE))
        payload = {"features": list(self.features), "params": self.params}
        (directory / PARAMS_FILE).write_text(json.dumps(payload, indent=2))
        self.example.to_json(directory / EXAMPLE_FILE, orient="split", index=False)

    @classmethod
    def load(cls, directory: Path) -> Self:
        import lightgbm as lgb

        payload = json.loads((directory / PARAMS_FILE).read_text())
        booster = lgb.Booster(model_file=str(directory / MODEL_FILE))
        if tuple(booster.feature_name()) != tuple(payload["features"]):
            raise ValueError(
                f"{directory / MODEL_FILE} was trained on {booster.feature_name()}, "
                f"but {PARAMS_FILE} lists {payload['features']}; save the model again"
            )
        example = pd.read_json(directory / EXAMPLE_FILE, orient="split", dtype=False)
        return cls.from_parts(booster, payload["params"], example)

    @classmethod
    def from_parts(cls, booster: Any, params: dict[str, Any], example: pd.DataFrame) -> Self:
        """A fitted reranker from a booster (its feature names are the features), e.g. the one
        MLflow's LightGBM flavor loads from the registry."""
        model = cls(tuple(booster.feature_name()), **params)
        model.booster = booster
        model.example = feature_matrix(example, model.features)
        return model

    def _fitted(self) -> Any:
        require_fitted(self.booster is not None, "reranker")
        return self.booster


def useful_groups(examples: pd.DataFrame) -> pd.DataFrame:
    """Examples of users with at least one positive label, sorted so each user is one block."""
    if examples.empty or not (examples[LABEL] > 0).any():
        raise NoPositiveExamples(
            f"no positive labels among {len(examples)} training examples: nobody clicked or read "
            "anything they were shown in the label window; check the window and the event types"
        )
    positive = examples.groupby("user_id")[LABEL].transform("max") > 0
    dropped = int(examples.loc[~positive, "user_id"].nunique())
    if dropped:
        log.info("dropping %d users with no positive label from the ranking groups", dropped)
    return examples[positive].sort_values("user_id", kind="stable").reset_index(drop=True)


def feature_matrix(frame: pd.DataFrame, features: tuple[str, ...]) -> pd.DataFrame:
    """The model's inputs as float64 columns in `features` order; NaN stays NaN (missing)."""
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise ValueError(
            f"ranking features missing: {missing}; build the frame with ranking_features()"
        )
    return frame[list(features)].astype("float64")
