"""Fault injection: a publish step killed with SIGKILL at each crash point, and the real Redis
killed after each acknowledged transition.

Each test has its own var dir, lake and embedded redis-server. A step runs in a subprocess with
`INBO_CRASH_AT=<point>` (`inbo.faults.crash_point`), which kills itself there: no `finally`, no
lock release. Afterwards: the live table is complete, what the crash left behind is collected,
rollback works, and a retry of the step finishes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psutil
import pytest
import redis
from test_publish import make_fallback, make_recs, shard_frames

from inbo import tables
from inbo.errors import PublishError
from inbo.faults import CRASH_AT
from inbo.lake import Lake, batch_key
from inbo.services import redis_client, stop_redis
from inbo.settings import Settings
from inbo.shards import shard_key
from pipelines.publish import index, steps
from pipelines.publish.checks import check_exist
from pipelines.publish.contract import EXPIRING, LIVE, ROLLED_BACK, STAGING, USERS, Keys
from pipelines.publish.lifecycle import collect_garbage, list_versions, live_meta
from pipelines.publish.reader import read_user_recs

NIGHT1 = datetime(2026, 11, 26, tzinfo=UTC)
NIGHT2 = NIGHT1 + timedelta(days=1)
SHARDS = 3
USERS_PER_NIGHT = 30
WINDOW = 7 * 24 * 3600
LEASE = 1.0
"""A short lock lease, so a retry gets the lock a killed step held within the test's wait."""


def write_batch(settings: Settings, end: datetime, seed: int) -> pd.DataFrame:
    """What scoring leaves for a publish: shard files and the fallback, in the lake."""
    lake = Lake(settings.lake)
    batch = batch_key(end)
    recs = make_recs(users=USERS_PER_NIGHT, per_user=5, seed=seed)
    for shard, frame in shard_frames(recs, SHARDS).items():
        partition = {"batch": batch, "shard": shard_key(shard, SHARDS)}
        lake.write(frame, tables.RECS.path, "part", partition, tables.RECS.schema)
    lake.write_batch(make_fallback(), tables.RECS_FALLBACK, batch)
    return recs


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """An own var dir and embedded Redis; night 1 is live, night 2 is scored, not published."""
    settings = Settings(
        var_dir=tmp_path / "var", redis_url="", lock_wait_seconds=5, lock_lease_seconds=LEASE
    )
    monkeypatch.setenv("INBO_VAR_DIR", str(settings.var_dir))
    monkeypatch.setenv("INBO_LOCK_LEASE_SECONDS", str(LEASE))  # the killed subprocess's too
    monkeypatch.delenv("INBO_REDIS_URL", raising=False)
    write_batch(settings, NIGHT1, seed=1)
    write_batch(settings, NIGHT2, seed=2)
    steps.publish_table(NIGHT1, settings)
    yield settings
    stop_redis(settings)


def run_killed(settings: Settings, point: str, code: str) -> None:
    """Run `code` in a fresh interpreter with the crash point armed; it must die by SIGKILL."""
    prelude = (
        "from datetime import UTC, datetime\n"
        "from inbo.settings import Settings\n"
        "from pipelines.publish import steps\n"
        f"settings = Settings(var_dir={str(settings.var_dir)!r}, redis_url='')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env={**os.environ, CRASH_AT: point, "INBO_VAR_DIR": str(settings.var_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, f"did not die at {point}: {result.stderr[-2000:]}"


def client_of(settings: Settings) -> redis.Redis:
    return redis_client(settings)


def assert_live_table_complete(settings: Settings) -> str:
    """The pointer names a live version whose every indexed key is there and reads back."""
    client = client_of(settings)
    meta = live_meta(client, settings.redis_prefix)
    assert meta is not None and meta["status"] == LIVE
    keys = Keys(settings.redis_prefix)
    version = meta["version"]
    check_exist(client, version, USERS, index.owned_keys(client, keys, version))
    for user in range(1, USERS_PER_NIGHT + 1):
        answer = read_user_recs(client, settings.redis_prefix, user)
        assert answer["personal"] and answer["table_version"] == version
    return str(version)


def statuses(settings: Settings) -> dict[str, str]:
    client = client_of(settings)
    listed = list_versions(client, settings.redis_prefix, rollback_window_seconds=WINDOW)
    return {v.version: v.status for v in listed}


def garbage_after(settings: Settings, days: float) -> list[str]:
    moment = datetime.now(UTC) + timedelta(days=days)
    client = client_of(settings)
    return collect_garbage(
        client, settings.redis_prefix, rollback_window_seconds=WINDOW, moment=moment
    )


def assert_nothing_outlives_its_window(settings: Settings) -> None:
    """After a week and a day only the live version is left, and it holds only its own keys."""
    garbage_after(settings, days=8)
    client = client_of(settings)
    live = live_meta(client, settings.redis_prefix)
    assert live is not None
    assert statuses(settings) == {live["version"]: LIVE}
    data = {
        key
        for key in client.scan_iter(f"{Keys(settings.redis_prefix).root}:*", count=1000)
        if "{" not in key
    }
    assert data == set(index.owned_keys(client, Keys(settings.redis_prefix), live["version"]))


@pytest.mark.parametrize("point", ["stage.after_index", "stage.midway"])
def test_a_writer_killed_while_staging(platform: Settings, point: str) -> None:
    first = assert_live_table_complete(platform)
    run_killed(platform, point, "steps.publish_table(datetime(2026, 11, 27, tzinfo=UTC), settings)")

    assert assert_live_table_complete(platform) == first  # readers never saw the half table
    crashed = next(v for v, status in statuses(platform).items() if status == STAGING)
    steps.publish_table(NIGHT2, platform)  # the night's retry: a fresh version goes live
    second = assert_live_table_complete(platform)
    assert second not in (first, crashed)
    assert garbage_after(platform, days=1.1) == [crashed]  # the abandoned one, after a day
    assert steps.rollback_table(settings=platform) == (second, first)
    assert_nothing_outlives_its_window(platform)


def test_a_shard_retry_completes_the_version_the_crash_left(platform: Settings) -> None:
    first = assert_live_table_complete(platform)
    version = steps.begin_publish(NIGHT2, SHARDS, platform)
    run_killed(
        platform,
        "stage.midway",
        f"steps.publish_shard(datetime(2026, 11, 27, tzinfo=UTC), {version!r}, 1, {SHARDS}, settings)",
    )
    for shard in range(SHARDS):  # the task retries; shard 1 rewrites its half-written keys
        steps.publish_shard(NIGHT2, version, shard, SHARDS, platform)
    steps.verify_version(NIGHT2, version, platform)
    assert steps.activate_version(version, platform) == first
    assert assert_live_table_complete(platform) == version
    assert_nothing_outlives_its_window(platform)


@pytest.mark.parametrize("point", ["activate.before_switch", "activate.after_switch"])
def test_activation_killed_before_or_after_the_switch(platform: Settings, point: str) -> None:
    first = assert_live_table_complete(platform)
    version = steps.verify_version(NIGHT2, steps.publish_batch(NIGHT2, platform), platform)
    run_killed(platform, point, f"steps.activate_version({version!r}, settings)")

    live = assert_live_table_complete(platform)
    assert live == (first if point == "activate.before_switch" else version)
    if live == version:  # the switch and the retirement went together
        assert statuses(platform)[first] == "retired"
    # the lock the killed process held is a lease: the retry gets it within one
    assert steps.activate_version(version, platform) == first
    assert assert_live_table_complete(platform) == version
    assert steps.rollback_table(settings=platform) == (version, first)
    assert assert_live_table_complete(platform) == first
    assert_nothing_outlives_its_window(platform)


def test_a_rollback_killed_after_its_switch(platform: Settings) -> None:
    first = assert_live_table_complete(platform)
    second = steps.publish_table(NIGHT2, platform).version
    run_killed(platform, "rollback.after_switch", "steps.rollback_table(settings=settings)")

    assert assert_live_table_complete(platform) == first
    assert statuses(platform)[second] == ROLLED_BACK
    assert steps.rollback_table(to=first, settings=platform) == (first, first)  # a retry: no-op
    assert steps.rollback_table(to=second, settings=platform) == (first, second)
    assert_nothing_outlives_its_window(platform)


def test_an_hourly_write_killed_midway_is_written_again_by_the_retry(platform: Settings) -> None:
    first = assert_live_table_complete(platform)
    fresh = make_recs(users=10, per_user=5, seed=9)
    fresh_path = platform.var_dir / "fresh.parquet"
    fresh.to_parquet(fresh_path)
    code = f"""
    import pandas as pd
    from inbo.services import redis_connection
    from pipelines.publish.versions import refresh_users
    recs = pd.read_parquet({str(fresh_path)!r})
    with redis_connection(settings) as client:
        refresh_users(client, settings.redis_prefix, {first!r}, recs, through="20261126T0100Z",
                      generated_at=datetime.now(UTC), batch_size=4)
    """
    run_killed(platform, "refresh.midway", code)
    client = client_of(platform)
    meta = live_meta(client, platform.redis_prefix)
    assert meta is not None and "refreshed_through" not in meta  # the mark did not move

    from pipelines.publish.versions import refresh_users

    refresh_users(
        client,
        platform.redis_prefix,
        first,
        fresh,
        through="20261126T0100Z",
        generated_at=datetime.now(UTC),
        batch_size=4,
    )
    meta = live_meta(client, platform.redis_prefix)
    assert meta is not None and meta["refreshed_through"] == "20261126T0100Z"
    expected = fresh[fresh.user_id == 3].sort_values("rank")["item_id"].tolist()
    answer = read_user_recs(client, platform.redis_prefix, 3)
    assert [i["item_id"] for i in answer["items"]] == expected
    assert assert_live_table_complete(platform) == first


def test_a_deletion_killed_midway_is_finished_by_the_next_collection(platform: Settings) -> None:
    first = assert_live_table_complete(platform)
    second = steps.publish_table(NIGHT2, platform).version
    run_killed(platform, "gc.midway", f"steps.remove_version({first!r}, settings)")

    assert statuses(platform)[first] == EXPIRING  # half deleted: never a rollback target
    with pytest.raises(PublishError, match="does not exist"):
        steps.rollback_table(to=first, settings=platform)  # its recovery pass finished it
    assert first not in statuses(platform)
    assert garbage_after(platform, days=0) == []
    assert assert_live_table_complete(platform) == second
    assert_nothing_outlives_its_window(platform)


# -- the embedded Redis killed after an acknowledged transition ---------------------------------


def kill_redis(settings: Settings) -> None:
    server = psutil.Process(int(client_of(settings).info("server")["process_id"]))
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)


def test_a_rollback_survives_a_redis_crash(platform: Settings) -> None:
    first = assert_live_table_complete(platform)
    second = steps.publish_table(NIGHT2, platform).version
    assert steps.rollback_table(settings=platform) == (second, first)
    kill_redis(platform)
    assert assert_live_table_complete(platform) == first  # restarted from its log
    assert statuses(platform)[second] == ROLLED_BACK


def test_two_activations_in_a_row_survive_a_redis_crash(platform: Settings) -> None:
    write_batch(platform, NIGHT2 + timedelta(days=1), seed=3)
    steps.publish_table(NIGHT2, platform)
    third = steps.publish_table(NIGHT2 + timedelta(days=1), platform).version
    kill_redis(platform)
    assert assert_live_table_complete(platform) == third


def test_an_hourly_refresh_survives_a_redis_crash(platform: Settings) -> None:
    from inbo.services import durable_writes
    from pipelines.publish.versions import refresh_users

    first = assert_live_table_complete(platform)
    client = client_of(platform)
    with durable_writes(platform, client):  # as pipelines.hourly.publish_active_users writes
        refresh_users(
            client,
            platform.redis_prefix,
            first,
            make_recs(users=5, per_user=5, seed=9),
            through="20261126T0100Z",
            generated_at=datetime.now(UTC),
            batch_size=100,
        )
    kill_redis(platform)
    meta = live_meta(client_of(platform), platform.redis_prefix)
    assert meta is not None and meta["refreshed_through"] == "20261126T0100Z"
    assert assert_live_table_complete(platform) == first
