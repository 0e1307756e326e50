"""The MLflow model registry: register versions, move the `champion` / `challenger` aliases, load.

Aliases, not stages: nightly training registers a new version and points `challenger` at it; the
promotion gate (`pipelines.promotion`) moves `champion` only when the challenger is not worse than
the champion by more than a margin. Publishing always loads `@champion`. A registered version carries its run id, so
it can be traced to the data window, parameters and git commit that made it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from inbo.errors import ConfigError, InboError
from inbo.settings import Settings
from pipelines.tracking import connect

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
REGISTERED_NAMES = {"popularity": "inbo-popularity", "als": "inbo-als", "reranker": "inbo-reranker"}


class RecommenderPyfunc(PythonModel):
    """The pyfunc face of a saved model, so `mlflow.pyfunc.load_model` works on it too:
    `predict` takes a frame with a `user_id` column and returns their top-n candidates."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def load_context(self, context: Any) -> None:
        from models.factory import load

        self.model = load(self.kind, Path(context.artifacts["model"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        n = int((params or {}).get("n", 10))
        return self.model.recommend(model_input["user_id"].to_numpy(), n)


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of one of our models, as `inbo models` lists it."""

    model: str
    kind: str
    version: int
    aliases: tuple[str, ...]
    run_id: str
    batch: str


def register(settings: Settings, kind: str, run_id: str, model_dir: Path, batch: str) -> int:
    """Register the model saved in `model_dir` under its run; point `challenger` at it.

    Idempotent per (run, batch): a re-run of the same batch finds its version instead of adding one.
    """
    import mlflow

    client = connect(settings)
    name = registered_name(kind)
    existing = [
        v
        for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if v.tags.get("batch") == batch
    ]
    if existing:
        version = int(existing[0].version)
    else:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=kind,
                python_model=RecommenderPyfunc(kind),
                artifacts={"model": str(model_dir)},
                pip_requirements=[],
            )
        created = mlflow.register_model(info.model_uri, name, tags={"batch": batch})
        version = int(created.version)
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    log.info("registered %s version %d as %s", name, version, CHALLENGER)
    return version


def registered_name(kind: str) -> str:
    try:
        return REGISTERED_NAMES[kind]
    except KeyError:
        raise ConfigError(
            f"no registered model for {kind!r}; known: {sorted(REGISTERED_NAMES)}"
        ) from None


def alias_version(settings: Settings, kind: str, alias: str) -> int | None:
    """The version an alias points at, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return int(
            connect(settings).get_model_version_by_alias(registered_name(kind), alias).version
        )
    except MlflowException:
        return None


def download(settings: Settings, kind: str, alias_or_version: str) -> tuple[Path, int]:
    """The local folder of a registered model's saved files, and its version number."""
    import mlflow
    from mlflow.models import Model

    client = connect(settings)
    name = registered_name(kind)
    version = (
        alias_or_version
        if alias_or_version.isdigit()
        else str(alias_version(settings, kind, alias_or_version) or "")
    )
    if not version:
        raise InboError(
            f"{name} has no version with alias {alias_or_version!r}; train or promote one first"
        )
    client.get_model_version(name, version)
    root = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    saved = Model.load(str(root)).flavors["python_function"]["artifacts"]["model"]["path"]
    return root / saved, int(version)


def promote(settings: Settings, kind: str, version: int) -> None:
    """Point `champion` at `version` (what `inbo promote` and the gate do)."""
    client = connect(settings)
    name = registered_name(kind)
    client.get_model_version(name, str(version))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    log.info("%s version %d is now %s", name, version, CHAMPION)


def list_models(settings: Settings) -> list[ModelVersion]:
    """Every registered version of our models with its aliases, run and batch."""
    client = connect(settings)
    rows = []
    for kind, name in REGISTERED_NAMES.items():
        for found in client.search_model_versions(f"name = '{name}'"):
            version = client.get_model_version(name, found.version)
            rows.append(
                ModelVersion(
                    model=name,
                    kind=kind,
                    version=int(version.version),
                    aliases=tuple(sorted(version.aliases)),
                    run_id=version.run_id,
                    batch=version.tags.get("batch", ""),
                )
            )
    return sorted(rows, key=lambda row: (row.model, -row.version))
