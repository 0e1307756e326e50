"""The MLflow model registry: register versions, move the `champion` / `challenger` aliases, load.

Aliases, not stages: nightly training registers a new version and points `challenger` at it; the
promotion gate (`pipelines.promotion`) moves `champion` only when the challenger is not worse than
the champion by more than a margin, and writes its decision on the version (`gate.*` tags and the
description). Publishing loads whatever `champion` points at, so setting the alias in the MLflow UI
promotes as well as `inbo promote` does.

Each version carries a signature, an input example and pinned pip requirements, and its run: the
data window, parameters, held-out scores and git commit that made it. The reranker is logged with
MLflow's LightGBM flavor (`mlflow.lightgbm.load_model` gives its booster); ALS, which has no
flavor, as a pyfunc whose loader is this module (`mlflow.pyfunc.load_model("models:/inbo-als@
champion").predict(frame_of_user_ids, params={"n": 10})`); both need this repository installed
at the run's commit to load as our model classes.

Cheap to import (the CLI takes `ModelKind` from here): mlflow and the models load inside functions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inbo.errors import ConfigError, InboError
from inbo.settings import Settings
from pipelines.tracking import LoggedRun, connect, read_run

if TYPE_CHECKING:
    import pandas as pd

    from models.als import ALSModel
    from models.reranker import Reranker

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
EXAMPLE_USERS = 3
"""Users in the ALS input example: the first few the model knows."""
EXAMPLE_N = 10
"""List length of the ALS input example (the pyfunc's `n` param defaults to it)."""


class ModelKind(StrEnum):
    """The models the nightly registers, by the name `inbo promote` and `inbo models` use."""

    ALS = "als"
    RERANKER = "reranker"

    @property
    def registered_name(self) -> str:
        """The registered model's name in MLflow."""
        return f"inbo-{self.value}"


ABOUT = {
    ModelKind.ALS: (
        "Candidate generator: implicit ALS on the batch's interaction confidences, one version "
        "per nightly batch. The version with alias `champion` is what the nightly publishes; "
        "set the alias here or run `inbo promote als VERSION` to promote one by hand."
    ),
    ModelKind.RERANKER: (
        "LightGBM LambdaRank ordering every source's candidates per user (features: "
        "`features.ranking.FEATURES`), one version per nightly batch. The version with alias "
        "`champion` is what the nightly publishes; set the alias here or run "
        "`inbo promote reranker VERSION` to promote one by hand."
    ),
}
"""The registered models' descriptions, set when a model is first registered."""

REQUIREMENTS = {
    ModelKind.ALS: ("mlflow", "implicit", "numpy", "scipy", "pandas", "threadpoolctl"),
    ModelKind.RERANKER: ("lightgbm", "numpy", "scipy", "pandas"),
}
"""The distributions each model needs to load, pinned to the installed versions when logged."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of one of our models, as `inbo models` lists it."""

    model: str
    """The kind (`als`, `reranker`): what `inbo promote` takes."""
    registered_name: str
    version: int
    aliases: tuple[str, ...]
    run_id: str
    batch: str
    decision: str
    """The gate's decision (`promoted`, `kept`), empty when the version was not gated."""


def kind_of(kind: str) -> ModelKind:
    try:
        return ModelKind(kind)
    except ValueError:
        known = ", ".join(kind.value for kind in ModelKind)
        raise ConfigError(f"no registered model for {kind!r}; known: {known}") from None


def registered_name(kind: str) -> str:
    return kind_of(kind).registered_name


def register(settings: Settings, kind: str, run_id: str, model_dir: Path, batch: str) -> int:
    """Log the model saved in `model_dir` on its run, register it; point `challenger` at it.

    Idempotent per (run, batch): a re-run of the same batch finds its version instead of adding one.
    """
    import mlflow

    client = connect(settings)
    model = kind_of(kind)
    name = model.registered_name
    existing = [
        v
        for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if v.tags.get("batch") == batch
    ]
    if existing:
        version = int(existing[0].version)
    else:
        with mlflow.start_run(run_id=run_id):
            info = _log_model(model, model_dir)
        created = mlflow.register_model(info.model_uri, name, tags={"batch": batch})
        version = int(created.version)
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, description=ABOUT[model])
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    log.info("registered %s version %d as %s", name, version, CHALLENGER)
    return version


def _log_model(kind: ModelKind, model_dir: Path) -> Any:
    """Log the saved model with its flavor, signature, input example and pinned requirements."""
    import mlflow
    from mlflow.models import infer_signature

    requirements = [f"{name}=={installed_version(name)}" for name in REQUIREMENTS[kind]]
    if kind is ModelKind.RERANKER:
        from models.reranker import Reranker

        reranker = Reranker.load(model_dir)
        return mlflow.lightgbm.log_model(
            reranker.booster,
            name=kind.value,
            signature=infer_signature(reranker.example, reranker.score(reranker.example)),
            input_example=reranker.example,
            pip_requirements=requirements,
            metadata={"params": reranker.params},
        )
    import pandas as pd

    from models.als import ALSModel

    als = ALSModel.load(model_dir)
    example = pd.DataFrame({"user_id": als.users.ids[:EXAMPLE_USERS]})
    params = {"n": EXAMPLE_N}
    answer = als.recommend(example["user_id"].to_numpy(), EXAMPLE_N)
    return mlflow.pyfunc.log_model(
        name=kind.value,
        loader_module=__name__,
        data_path=str(model_dir),
        signature=infer_signature(example, answer, params),
        input_example=(example, params),
        pip_requirements=requirements,
    )


class ALSPyfunc:
    """The pyfunc face of a registered ALS: `predict` takes a frame with a `user_id` column and
    returns their top-n candidates (`models.base.CANDIDATE_COLUMNS`)."""

    def __init__(self, model: ALSModel) -> None:
        self.model = model

    def predict(
        self, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        n = int((params or {}).get("n", EXAMPLE_N))
        return self.model.recommend(model_input["user_id"].to_numpy(), n)


def _load_pyfunc(data_path: str) -> ALSPyfunc:
    """MLflow's pyfunc loader for ALS versions (`loader_module` of the logged model)."""
    from models.als import ALSModel

    return ALSPyfunc(ALSModel.load(Path(data_path)))


def alias_version(settings: Settings, kind: str, alias: str) -> int | None:
    """The version an alias points at, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return int(
            connect(settings).get_model_version_by_alias(registered_name(kind), alias).version
        )
    except MlflowException:
        return None


def resolve(settings: Settings, kind: str, alias_or_version: str) -> int:
    """The version number behind a version or an alias; `InboError` when there is none."""
    from mlflow.exceptions import MlflowException

    name = registered_name(kind)
    if not alias_or_version.isdigit():
        found = alias_version(settings, kind, alias_or_version)
        if found is None:
            raise InboError(
                f"{name} has no version with alias {alias_or_version!r}; train or promote one first"
            )
        return found
    try:
        connect(settings).get_model_version(name, alias_or_version)
    except MlflowException:
        raise InboError(f"{name} has no version {alias_or_version}; see `inbo models`") from None
    return int(alias_or_version)


def _download(settings: Settings, kind: str, alias_or_version: str) -> Path:
    """The local folder of a registered version's MLflow model (MLmodel and its files)."""
    import mlflow

    version = resolve(settings, kind, alias_or_version)
    return Path(mlflow.artifacts.download_artifacts(f"models:/{registered_name(kind)}/{version}"))


def load_als(settings: Settings, alias_or_version: str) -> ALSModel:
    """The ALS of a registered version (or alias), as `ALSModel`."""
    from mlflow.models import Model

    from models.als import ALSModel

    root = _download(settings, ModelKind.ALS, alias_or_version)
    return ALSModel.load(root / Model.load(str(root)).flavors["python_function"]["data"])


def load_reranker(settings: Settings, alias_or_version: str) -> Reranker:
    """The reranker of a registered version (or alias): the LightGBM flavor's booster, with the
    params and input example logged beside it."""
    import mlflow
    from mlflow.models import Model

    from models.reranker import Reranker

    root = _download(settings, ModelKind.RERANKER, alias_or_version)
    logged = Model.load(str(root))
    booster = mlflow.lightgbm.load_model(str(root))
    example = logged.load_input_example(str(root))
    return Reranker.from_parts(booster, (logged.metadata or {})["params"], example)


def promote(settings: Settings, kind: str, version: int) -> None:
    """Point `champion` at `version` (what `inbo promote` and the gate do)."""
    client = connect(settings)
    name = registered_name(kind)
    resolve(settings, kind, str(version))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    log.debug("%s version %d is now %s", name, version, CHAMPION)


def version_run(settings: Settings, kind: str, version: int) -> LoggedRun:
    """The run a registered version was trained in: its params, metrics and tags."""
    found = connect(settings).get_model_version(registered_name(kind), str(version))
    return read_run(settings, found.run_id)


def annotate(
    settings: Settings, kind: str, version: int, tags: Mapping[str, str], description: str
) -> None:
    """Set tags and the description of a registered version (the gate's record of its decision)."""
    client = connect(settings)
    name = registered_name(kind)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    client.update_model_version(name, str(version), description=description)


def list_models(settings: Settings) -> list[ModelVersion]:
    """Every registered version of our models with its aliases, run, batch and gate decision."""
    client = connect(settings)
    rows = []
    for kind in ModelKind:
        for found in client.search_model_versions(f"name = '{kind.registered_name}'"):
            version = client.get_model_version(kind.registered_name, found.version)
            rows.append(
                ModelVersion(
                    model=kind.value,
                    registered_name=kind.registered_name,
                    version=int(version.version),
                    aliases=tuple(sorted(version.aliases)),
                    run_id=version.run_id,
                    batch=version.tags.get("batch", ""),
                    decision=version.tags.get("gate.decision", ""),
                )
            )
    return sorted(rows, key=lambda row: (row.model, -row.version))
