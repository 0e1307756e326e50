"""Reconciling the app's Redis counters with the warehouse, on a simulated world and a real Redis.

One world (with some dirty rows, so the quarantine holds rows the app counted) is simulated with
its counters, ingested and validated once; each test loads the counters it needs under a prefix of
its own: the simulated (drifted) ones, or the clean ones the simulator's truth gives back.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from cli import pipeline as cli_pipeline
from inbo import tables
from inbo.errors import DataNotFound
from inbo.lake import Lake
from inbo.settings import Settings
from pipelines.app import counters as app_counters
from pipelines.app.counters import FIELDS, CounterStore, open_counters
from pipelines.demo.simulate import simulate
from pipelines.ingest import ingest
from pipelines.reconcile import _compare_and_set, reconcile_counters, restore_counters
from pipelines.validate import validate_batch

END = datetime(2026, 11, 20, tzinfo=UTC)
DRIFT = inspect.signature(cli_pipeline.simulate).parameters["counter_drift"].default
"""The drift `inbo simulate` (and so `inbo demo`) injects by default."""
INBO = str(Path(sys.executable).with_name("inbo"))


@dataclass(frozen=True)
class World:
    settings: Settings
    simulated: pd.DataFrame  # the counters as the simulator left them (NA: field absent)
    truth: pd.DataFrame  # the drift it recorded

    @property
    def clean(self) -> pd.DataFrame:
        """The counters without the recorded drift: what the app should have counted."""
        clean = self.simulated.fillna(0).astype("int64")
        for row in self.truth.itertuples():
            clean.at[row.item_id, row.field] = row.expected
        return clean


@pytest.fixture(scope="module")
def world(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    folder = tmp_path_factory.mktemp("reconcile")
    settings = Settings(var_dir=folder / "var", redis_url=redis_server, app_redis_prefix="rc-sim")
    with open_counters(settings) as store:
        simulate(
            settings.app_db, users=300, items=120, days=7, seed=11,
            end=END.replace(tzinfo=None), truth_dir=folder / "truth",
            dirty_share=0.005, counters=store, counter_drift=DRIFT,
        )  # fmt: skip
        simulated = store.read()
        store.clear()
    ingest(END, settings)
    validate_batch(END, settings)
    truth = pd.read_parquet(folder / "truth" / app_counters.DRIFT_TRUTH)
    return World(settings, simulated, truth)


@pytest.fixture
def app(world: World, request: pytest.FixtureRequest) -> Iterator[tuple[Settings, CounterStore]]:
    """The world's settings with an app prefix of this test's own, and that counter store."""
    prefix = f"rc-{abs(hash(request.node.nodeid)) % 10**8}"
    settings = world.settings.model_copy(update={"app_redis_prefix": prefix})
    with open_counters(settings) as store:
        store.clear()
        yield settings, store
        store.clear()


def load(store: CounterStore, counters: pd.DataFrame) -> None:
    store.increment(counters.fillna(0).astype("int64"))


def hashes(store: CounterStore, items: list[int]) -> dict[int, dict[Any, Any]]:
    return {item: store.client.hgetall(store.key(item)) for item in items}


def test_clean_counters_reconcile_to_zero_with_the_quarantine_counted(
    world: World, app: tuple[Settings, CounterStore]
) -> None:
    settings, store = app
    load(store, world.clean)
    report = reconcile_counters(END, settings=settings)
    assert report.inconsistent_items == 0 and report.inconsistency_rate == 0.0
    assert report.items_checked == len(world.clean) > 100
    assert 9_000_000 in world.clean.index  # the app counted rows on an issue that does not exist
    assert report.counted["quarantined"] > 0 and report.counted["pending"] == 0
    assert sum(report.missing.values()) == sum(report.extra.values()) == 0
    assert report.worst == [] and report.within_target


def test_the_simulated_drift_is_detected_at_the_recorded_rate(
    world: World, app: tuple[Settings, CounterStore]
) -> None:
    settings, store = app
    load(store, world.simulated)
    report = reconcile_counters(END, settings=settings)
    drifted = world.truth["item_id"].nunique()
    assert drifted > 0
    assert report.inconsistent_items == drifted
    assert report.inconsistency_rate == drifted / report.items_checked
    difference = world.truth["counted"] - world.truth["expected"]
    for name in FIELDS:
        in_field = world.truth["field"] == name
        assert report.extra[name] == difference[in_field].clip(lower=0).sum(), name
        assert report.missing[name] == -difference[in_field].clip(upper=0).sum(), name
    for row in report.worst:
        recorded = world.truth[world.truth["item_id"] == row["item_id"]]
        assert {r.field: (r.counted, r.expected) for r in recorded.itertuples()} == {
            f: (row["counter"][f], row["warehouse"][f])
            for f in FIELDS
            if row["counter"][f] != row["warehouse"][f]
        }


def inject(store: CounterStore, clean: pd.DataFrame) -> dict[int, dict[str, int]]:
    """Known drift on five busy items: lost and double counts, a field and a whole hash gone.

    Returns item -> field -> amount the counter is off by (negative: increments lost).
    """
    busy = clean.sort_values("impressions", ascending=False).index[:5].tolist()
    a, b, c, d, e = busy
    store.client.hincrby(store.key(a), "impressions", -7)
    store.client.hincrby(store.key(b), "clicks", 3)
    store.client.hincrby(store.key(c), "reads", 1)
    store.client.hdel(store.key(d), "saves")
    store.client.delete(store.key(e))
    return {
        a: {"impressions": -7},
        b: {"clicks": 3},
        c: {"reads": 1},
        d: {"saves": -int(clean.at[d, "saves"])},
        e: {f: -int(clean.at[e, f]) for f in FIELDS if clean.at[e, f]},
    }


def test_injected_drift_is_found_repaired_and_restored(
    world: World, app: tuple[Settings, CounterStore]
) -> None:
    settings, store = app
    load(store, world.clean)
    clean_hashes = hashes(store, world.clean.index.tolist())
    injected = inject(store, world.clean)
    assert all(amount for change in injected.values() for amount in change.values())
    drifted_hashes = hashes(store, list(injected))

    found = reconcile_counters(END, settings=settings)
    assert found.inconsistent_items == 5
    assert found.inconsistency_rate == 5 / found.items_checked
    sizes = {item: sum(abs(v) for v in change.values()) for item, change in injected.items()}
    assert [row["item_id"] for row in found.worst] == sorted(
        sizes, key=lambda item: (-sizes[item], item)
    )
    for row in found.worst:
        for name, amount in injected[row["item_id"]].items():
            assert row["counter"][name] - row["warehouse"][name] == amount
            assert row["warehouse"][name] == world.clean.at[row["item_id"], name]
    assert found.backup is None

    repaired = reconcile_counters(END, repair=True, settings=settings)
    assert (repaired.inconsistent_items, repaired.repaired) == (5, 5)
    assert repaired.backup is not None
    assert Lake(settings.lake).exists(tables.COUNTER_BACKUPS.path, name=repaired.backup)
    assert hashes(store, world.clean.index.tolist()) == clean_hashes
    again = reconcile_counters(END, repair=True, settings=settings)
    assert (again.inconsistent_items, again.repaired, again.backup) == (0, 0, None)

    assert restore_counters(repaired.backup, settings) == 5
    assert hashes(store, list(injected)) == drifted_hashes
    assert not store.client.exists(store.key(list(injected)[-1]))
    assert reconcile_counters(END, settings=settings).inconsistent_items == 5


def test_repair_leaves_an_item_that_changed_since_the_check(
    world: World, app: tuple[Settings, CounterStore]
) -> None:
    _, store = app
    load(store, world.clean.head(2))
    first, second = world.clean.index[:2]
    before = store.read([first, second])
    store.client.hincrby(store.key(second), "impressions", 1)  # the app counts meanwhile
    after = before.fillna(0) + 10
    assert _compare_and_set(store, before, after.astype("Int64")) == [second]
    assert store.read([first]).iloc[0].tolist() == after.loc[first].tolist()
    assert int(str(store.client.hget(store.key(second), "impressions"))) == (
        world.clean.at[second, "impressions"] + 1
    )


def test_rows_not_validated_yet_are_counted_from_the_app_database(
    world: World, app: tuple[Settings, CounterStore], tmp_path: Path
) -> None:
    settings, store = app
    shutil.copytree(world.settings.var_dir, tmp_path / "var")
    settings = settings.model_copy(update={"var_dir": tmp_path / "var"})
    recorded = (END + timedelta(minutes=5)).replace(tzinfo=None).isoformat(" ")
    kinds = np.array(["impression", "click", "click", "share"], dtype=object)
    engine = create_engine(settings.app_db)
    with engine.begin() as conn:
        for kind in kinds:
            conn.execute(
                text(
                    "INSERT INTO experience_interactions (user_id, issue_id, kind, occurred_at, "
                    "recorded_at) VALUES (1, 3, :kind, :at, :at)"
                ),
                {"kind": kind, "at": recorded},
            )
    engine.dispose()
    load(store, world.clean)
    store.increment(app_counters.interaction_counts(np.full(4, 3), kinds))
    report = reconcile_counters(END, settings=settings)
    assert report.counted["pending"] == 3  # the share feeds no counter
    assert report.inconsistent_items == 0

    ingest(END + timedelta(days=1), settings)  # planned and extracted, not validated yet
    report = reconcile_counters(END, settings=settings)
    assert report.counted["pending"] == 3
    assert report.inconsistent_items == 0


def test_reconcile_needs_a_validated_batch(app: tuple[Settings, CounterStore]) -> None:
    settings, _ = app
    with pytest.raises(DataNotFound, match="inbo ingest"):
        reconcile_counters(END + timedelta(days=1), settings=settings)


def test_cli_repair_refuses_without_yes_when_nobody_can_confirm(
    world: World, app: tuple[Settings, CounterStore]
) -> None:
    settings, store = app
    load(store, world.simulated)
    env = {
        **os.environ,
        "INBO_VAR_DIR": str(settings.var_dir),
        "INBO_REDIS_URL": settings.redis_url,
        "INBO_APP_REDIS_PREFIX": settings.app_redis_prefix,
    }
    before = hashes(store, world.simulated.index.tolist())
    backups = Lake(settings.lake).files(tables.COUNTER_BACKUPS.path)
    result = subprocess.run(
        [INBO, "reconcile", "--repair"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: refusing to rewrite the app's counters in Redis without --yes "
        "(no terminal to confirm on)"
    ]
    assert hashes(store, world.simulated.index.tolist()) == before
    assert Lake(settings.lake).files(tables.COUNTER_BACKUPS.path) == backups
