"""Experiments as config in the repo: `experiments.yml`, validated by the typed models below.

An experiment names its variants with their weights and the policy each one serves, the layer it
belongs to (experiments of one layer never share a user), its metrics, the minimum detectable
effect it is powered for and its planned length. Editing the file changes nothing live: an
experiment serves from the first nightly after `inbo experiment start NAME`.
"""

from __future__ import annotations

import logging
import re
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inbo.errors import ConfigError

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
"""Experiment, variant and layer names: short, lower case, safe in a key, a JSON string and a
file name without escaping. The payload's variant label is `<experiment>/<variant>`."""

BUCKETS = 10_000
"""Assignment resolution: a user hashes into one of these per salt (`pipelines.experiments.assignment`)."""


class PolicyKind(StrEnum):
    """What a variant serves in a user's list."""

    CHAMPION = "champion"  # the full pipeline with the registry's champion models
    BLEND = "blend"  # every candidate source, no reranker: the baseline blend
    ALS = "als"  # ALS candidates only, by ALS score
    POPULARITY = "popularity"  # the batch's trending list, minus what the user read or hid
    PINNED = "pinned"  # the full pipeline with the given registry versions


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: PolicyKind
    als_version: int | None = Field(None, ge=1, description="Registry version (pinned only).")
    reranker_version: int | None = Field(None, ge=1, description="Registry version (pinned).")

    @model_validator(mode="after")
    def _versions_only_when_pinned(self) -> Self:
        pinned = self.als_version is not None or self.reranker_version is not None
        if self.kind is PolicyKind.PINNED and self.als_version is None:
            raise ValueError("a pinned policy needs als_version (and may give reranker_version)")
        if self.kind is not PolicyKind.PINNED and pinned:
            raise ValueError(f"a {self.kind} policy takes no registry versions; use kind: pinned")
        return self

    @property
    def key(self) -> str:
        """A short stable name: `champion`, `pinned:als=3,reranker=5`."""
        if self.kind is not PolicyKind.PINNED:
            return str(self.kind)
        versions = [f"als={self.als_version}"]
        if self.reranker_version is not None:
            versions.append(f"reranker={self.reranker_version}")
        return f"pinned:{','.join(versions)}"


CHAMPION = Policy(kind=PolicyKind.CHAMPION)


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    weight: float = Field(gt=0, description="Relative share of the experiment's users.")
    policy: Policy

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _checked_name(value, "variant")


class Metric(StrEnum):
    """What an analysis can measure per exposed user (`pipelines.experiments.analysis`)."""

    CTR = "ctr"  # clicks / impressions, delta method
    READS_PER_USER = "reads_per_user"
    READ_RATE = "read_rate"  # reads / impressions, delta method
    CLICKS_PER_USER = "clicks_per_user"
    DISMISSALS_PER_USER = "dismissals_per_user"
    UNSUBSCRIBES_PER_USER = "unsubscribes_per_user"


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    salt: str = Field(min_length=1, description="Hashed with the user id; a new salt reshuffles.")
    layer: str = "feed-ranking"
    traffic: float = Field(1.0, gt=0, le=1, description="Share of the layer's users it takes.")
    variants: tuple[Variant, ...] = Field(min_length=2)
    control: str = Field(description="The variant every other one is compared with.")
    primary_metric: Metric = Metric.CTR
    secondary_metrics: tuple[Metric, ...] = (Metric.READS_PER_USER, Metric.READ_RATE)
    guardrail_metrics: tuple[Metric, ...] = (
        Metric.DISMISSALS_PER_USER,
        Metric.UNSUBSCRIBES_PER_USER,
    )
    minimum_detectable_effect: float = Field(
        gt=0, description="Relative lift of the primary metric the test must be able to see."
    )
    planned_days: float = Field(gt=0, description="Planned length; the fixed-horizon readout.")
    alpha: float = Field(0.05, gt=0, lt=0.5)
    power: float = Field(0.8, gt=0.5, lt=1)

    @field_validator("name", "layer")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _checked_name(value, "experiment or layer")

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        if self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the variants {names}")
        if self.primary_metric in (*self.secondary_metrics, *self.guardrail_metrics):
            raise ValueError("the primary metric is also listed as secondary or guardrail")
        return self

    @property
    def weights(self) -> dict[str, float]:
        """Each variant's configured weight, by name."""
        return {v.name: v.weight for v in self.variants}

    def label(self, variant: str) -> str:
        """What the payload and the exposure log call a user of `variant`."""
        return f"{self.name}/{variant}"


class Holdout(BaseModel):
    """Users kept out of every experiment, served the champion: the platform's long-run baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(0.0, ge=0, lt=0.5)
    salt: str = "inbo-global-holdout"


HOLDOUT_LABEL = "holdout"


class ExperimentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    holdout: Holdout = Holdout()
    experiments: tuple[Experiment, ...] = ()

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names repeat: {names}")
        for layer in {e.layer for e in self.experiments}:
            taken = sum(e.traffic for e in self.experiments if e.layer == layer)
            if taken > 1 + 1e-9:
                raise ValueError(f"layer {layer} is oversubscribed: traffic adds up to {taken:g}")
        return self

    def get(self, name: str) -> Experiment:
        for experiment in self.experiments:
            if experiment.name == name:
                return experiment
        known = ", ".join(e.name for e in self.experiments) or "none"
        raise ConfigError(f"no experiment {name!r} in the experiments file (known: {known})")


def _checked_name(value: str, what: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be 1-40 of a-z, 0-9, '-', '_', starting with a letter or digit"
        )
    return value


def load_experiments(path: Path) -> ExperimentsFile:
    """The experiments file at `path` (none there: no experiments); `ConfigError` if invalid."""
    import yaml

    if not path.exists():
        log.debug("no experiments file at %s", path)
        return ExperimentsFile()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return ExperimentsFile.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
