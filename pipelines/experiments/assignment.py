"""Who is in which variant: a salted hash of the user id into 10,000 buckets, the same everywhere.

`bucket(salt, user_id)` is the first 8 bytes of SHA-256 of `"<salt>:<user_id>"` as a big-endian
unsigned integer, modulo 10,000. SHA-256 is in every language's standard library, so a Node or Go
app computes the same bucket (docs/experiments.md has test vectors). Three hashes place a user:
1. the global holdout: `bucket(holdout.salt, id) < share * 10,000` keeps them out of everything;
2. the layer: `bucket("layer:<layer>", id)` falls in the bucket range of at most one experiment of
   the layer (ranges are laid out in file order, each `traffic * 10,000` wide);
3. the variant: `bucket(experiment.salt, id)` against the variants' cumulative weights.
Nothing is stored per user: a user added later is placed the moment their id is known, and the
same id always lands in the same variant while the salts and the file order stay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines.experiments.config import (
    BUCKETS,
    CHAMPION,
    HOLDOUT_LABEL,
    Experiment,
    ExperimentsFile,
)


def bucket(salt: str, user_id: int) -> int:
    """The user's bucket in 0..9,999 under `salt`."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def buckets(salt: str, user_ids: np.ndarray) -> np.ndarray:
    """`bucket` of every id (about 1 s per million ids)."""
    return np.fromiter((bucket(salt, int(u)) for u in user_ids), np.int64, len(user_ids))


@dataclass(frozen=True)
class Arm:
    """A variant as served: its label, its policy and its bucket range [lo, hi) under the salt."""

    label: str
    policy: str
    lo: int
    hi: int


@dataclass(frozen=True)
class Slot:
    """A running experiment's place in the layer: layer buckets [lo, hi) and its arms."""

    experiment: str
    salt: str
    lo: int
    hi: int
    arms: tuple[Arm, ...]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Slot:
        return cls(**{**raw, "arms": tuple(Arm(**arm) for arm in raw["arms"])})


@dataclass(frozen=True)
class Allocation:
    """The running experiments of the table's layer, fixed for one batch (kept in its score
    plan, so every shard, the publisher and the hourly refresh place users the same way)."""

    layer: str
    holdout_salt: str
    holdout_buckets: int
    slots: tuple[Slot, ...]

    def assign(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per user: the label (`<experiment>/<variant>`, `holdout`, or None) and policy key."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        labels = np.full(len(user_ids), None, dtype=object)
        policies = np.full(len(user_ids), CHAMPION.key, dtype=object)
        if not self.slots and not self.holdout_buckets:
            return labels, policies
        held = np.zeros(len(user_ids), dtype=bool)
        if self.holdout_buckets:
            held = buckets(self.holdout_salt, user_ids) < self.holdout_buckets
            labels[held] = HOLDOUT_LABEL
        if self.slots:
            layer = buckets(layer_salt(self.layer), user_ids)
            for slot in self.slots:
                inside = np.flatnonzero(~held & (layer >= slot.lo) & (layer < slot.hi))
                arm_bucket = buckets(slot.salt, user_ids[inside])
                for arm in slot.arms:
                    rows = inside[(arm_bucket >= arm.lo) & (arm_bucket < arm.hi)]
                    labels[rows] = arm.label
                    policies[rows] = arm.policy
        return labels, policies

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, object] | None) -> Allocation:
        if not raw:
            return NO_EXPERIMENTS
        slots = tuple(Slot.from_json(slot) for slot in raw["slots"])  # type: ignore[attr-defined]
        return cls(
            str(raw["layer"]),
            str(raw["holdout_salt"]),
            int(raw["holdout_buckets"]),  # type: ignore[call-overload]
            slots,
        )


NO_EXPERIMENTS = Allocation("", "", 0, ())


def layer_salt(layer: str) -> str:
    return f"layer:{layer}"


def allocation(config: ExperimentsFile, running: Sequence[str], layer: str) -> Allocation:
    """The table's allocation: the running experiments of `layer`, in their file-order ranges.

    Ranges are laid out over every experiment of the layer in the file, running or not, so
    starting or stopping one never moves another's users; new experiments go at the end.
    """
    slots = []
    offset = 0
    for experiment in (e for e in config.experiments if e.layer == layer):
        width = round(experiment.traffic * BUCKETS)
        if experiment.name in running:
            slots.append(
                Slot(experiment.name, experiment.salt, offset, offset + width, _arms(experiment))
            )
        offset += width
    return Allocation(
        layer, config.holdout.salt, round(config.holdout.share * BUCKETS), tuple(slots)
    )


def _arms(experiment: Experiment) -> tuple[Arm, ...]:
    """The variants' bucket ranges from their cumulative weights (the last one ends at 10,000)."""
    weights = np.array([v.weight for v in experiment.variants])
    edges = np.rint(np.cumsum(weights) / weights.sum() * BUCKETS).astype(int)
    starts = np.r_[0, edges[:-1]]
    return tuple(
        Arm(experiment.label(v.name), v.policy.key, int(lo), int(hi))
        for v, lo, hi in zip(experiment.variants, starts, edges, strict=True)
    )
