"""Pick a recommender implementation by name, so config and the CLI can choose models."""

from __future__ import annotations

from typing import Any

from inbo.errors import ConfigError
from models.base import Recommender
from models.continue_reading import ContinueReadingModel
from models.popularity import PopularityModel

MODELS: dict[str, type] = {
    PopularityModel.name: PopularityModel,
    ContinueReadingModel.name: ContinueReadingModel,
}


def create(name: str, **params: Any) -> Recommender:
    """A new, unfitted model called `name`."""
    try:
        return MODELS[name](**params)
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
