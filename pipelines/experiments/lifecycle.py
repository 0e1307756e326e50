"""Starting and stopping experiments, and which ones a batch's table serves.

An experiment's state is one JSON file under `_state/experiments/` in the lake: when it started
and stopped, the bucket range it took in its layer and the config it started with. While it runs
the table serves that snapshot, so editing `experiments.yml` cannot reshuffle its users midway.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from inbo import tables
from inbo.errors import ConfigError, DataNotFound
from inbo.lake import Lake
from inbo.settings import Settings, get_settings
from pipelines.experiments.assignment import Allocation, Slot, allocation
from pipelines.experiments.config import (
    BUCKETS,
    CHAMPION,
    Experiment,
    ExperimentsFile,
    load_experiments,
)

log = logging.getLogger(__name__)

RUNNING, STOPPED = "running", "stopped"


@dataclass(frozen=True)
class ExperimentState:
    name: str
    status: str
    started_at: str
    stopped_at: str | None
    layer: str
    slot: dict[str, Any]
    config: dict[str, object]
    power: dict[str, object]

    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    def stopped(self) -> datetime | None:
        return None if self.stopped_at is None else datetime.fromisoformat(self.stopped_at)

    def experiment(self) -> Experiment:
        """The experiment as it started (editing the file later changes nothing)."""
        return Experiment.model_validate(self.config)

    def serves_at(self, moment: datetime) -> bool:
        stopped = self.stopped()
        return self.started() <= moment and (stopped is None or moment < stopped)


def experiments_config(settings: Settings) -> ExperimentsFile:
    """The experiments file, checked against the table's layer: only that layer may change lists."""
    config = load_experiments(settings.experiments_file)
    for experiment in config.experiments:
        changes_list = any(v.policy != CHAMPION for v in experiment.variants)
        if changes_list and experiment.layer != settings.experiment_layer:
            raise ConfigError(
                f"experiment {experiment.name} is in layer {experiment.layer} but serves other "
                f"policies than champion: only layer {settings.experiment_layer} (the tables') can"
            )
    return config


def read_states(lake: Lake) -> dict[str, ExperimentState]:
    return {
        name: ExperimentState(**json.loads(lake.read_json(tables.EXPERIMENT_STATES, name)))
        for name in lake.names(tables.EXPERIMENT_STATES)
    }


def read_state(lake: Lake, name: str) -> ExperimentState:
    try:
        return ExperimentState(**json.loads(lake.read_json(tables.EXPERIMENT_STATES, name)))
    except DataNotFound:
        raise ConfigError(f"experiment {name} was never started") from None


def start_experiment(
    name: str, at: datetime, power: dict[str, object], settings: Settings | None = None
) -> ExperimentState:
    """Record `name` as running from `at` (aware UTC, like a batch's interval end), in its
    range of its layer.

    The caller has checked its power (`pipelines.experiments.analysis.power_check`); `power`
    is recorded with it. Refuses a name already running or a range a running one holds.
    """
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    config = experiments_config(settings)
    experiment = config.get(name)
    states = read_states(lake)
    if name in states and states[name].status == RUNNING:
        raise ConfigError(f"experiment {name} is already running (since {states[name].started_at})")
    slot = allocation(config, [name], experiment.layer).slots[0]
    for other in states.values():
        other_slot = Slot.from_json(other.slot)
        overlaps = other_slot.lo < slot.hi and slot.lo < other_slot.hi
        if other.status == RUNNING and other.layer == experiment.layer and overlaps:
            raise ConfigError(
                f"experiment {other.name} still holds buckets {other_slot.lo}-{other_slot.hi} of "
                f"layer {experiment.layer}; stop it first"
            )
    state = ExperimentState(
        name,
        RUNNING,
        at.isoformat(),
        None,
        experiment.layer,
        asdict(slot),
        experiment.model_dump(mode="json"),
        power,
    )
    _write(lake, state)
    log.info("experiment %s runs from %s", name, state.started_at)
    return state


def stop_experiment(name: str, at: datetime, settings: Settings | None = None) -> ExperimentState:
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    state = read_state(lake, name)
    if state.status != RUNNING:
        raise ConfigError(f"experiment {name} is not running (stopped at {state.stopped_at})")
    stopped = replace(state, status=STOPPED, stopped_at=at.isoformat())
    _write(lake, stopped)
    return stopped


def table_allocation(settings: Settings, moment: datetime) -> Allocation:
    """Who the table published for the batch ending at `moment` serves what."""
    lake = Lake(settings.lake)
    config = experiments_config(settings)
    running = [
        s
        for s in read_states(lake).values()
        if s.layer == settings.experiment_layer and s.serves_at(moment)
    ]
    slots = tuple(Slot.from_json(s.slot) for s in running)
    return Allocation(
        settings.experiment_layer,
        config.holdout.salt,
        round(config.holdout.share * BUCKETS),
        tuple(sorted(slots, key=lambda slot: slot.lo)),
    )


def _write(lake: Lake, state: ExperimentState) -> None:
    lake.write_json(json.dumps(asdict(state), indent=2), tables.EXPERIMENT_STATES, state.name)
