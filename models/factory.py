"""Pick a recommender implementation by name, so config and the CLI can choose models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inbo.errors import ConfigError
from models.als import ALSModel
from models.base import Recommender
from models.content import ContentModel
from models.continue_reading import ContinueReadingModel
from models.popularity import PopularityModel

MODELS: dict[str, Any] = {
    PopularityModel.name: PopularityModel,
    ContinueReadingModel.name: ContinueReadingModel,
    ALSModel.name: ALSModel,
    ContentModel.name: ContentModel,
}


def model_class(name: str) -> Any:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def load(name: str, directory: Path) -> Recommender:
    """A model of kind `name` from the folder its `save` wrote."""
    return model_class(name).load(directory)


def create(name: str, **params: Any) -> Recommender:
    """A new, unfitted model called `name`."""
    return model_class(name)(**params)
