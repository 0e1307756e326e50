"""`inbo status` and `inbo services`: the verdict and exit code follow the platform's state."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from inbo.lake import Lake, batch_key
from inbo.settings import Settings
from pipelines.health import State, check_health
from pipelines.offline.synthetic import make_fallback, make_recs, write_score_output
from tests.test_cli import run

BATCH_END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def published(live_redis: Settings) -> Settings:
    """A table built from the batch ending at BATCH_END, live in the session's Redis."""
    from pipelines.publish.steps import publish_table

    lake = Lake(live_redis.lake)
    write_score_output(lake, batch_key(BATCH_END), make_recs(40, 5), make_fallback(), shards=1)
    publish_table(BATCH_END, live_redis)
    return live_redis


def test_a_fresh_table_is_healthy_and_an_old_one_stale(published: Settings) -> None:
    limit = timedelta(seconds=published.stale_after_seconds)

    fresh = check_health(published, now=BATCH_END + limit)
    old = check_health(published, now=BATCH_END + limit + timedelta(minutes=1))

    assert fresh.state is State.HEALTHY and fresh.reasons == []
    assert fresh.live is not None and fresh.live.users == 40
    assert fresh.live.data_through == BATCH_END.isoformat()
    assert old.state is State.STALE and "INBO_STALE_AFTER_SECONDS" in old.reasons[0]


def test_status_exit_codes_follow_healthy_stale_and_down(published: Settings) -> None:
    """0, 1 and 3: what a cron job or a probe acts on without parsing text."""
    age = (datetime.now(UTC) - BATCH_END).total_seconds()

    healthy = run("status", "--json", INBO_STALE_AFTER_SECONDS=str(int(age) + 3600))
    stale = run("status", INBO_STALE_AFTER_SECONDS="3600")
    down = run("status", "--json", INBO_REDIS_URL="redis://127.0.0.1:1/0")

    assert healthy.returncode == 0, healthy.stderr
    shown = json.loads(healthy.stdout)
    assert shown["state"] == "healthy" and shown["live"]["users"] == 40
    assert stale.returncode == 1 and "stale" in stale.stdout
    assert down.returncode == 3, down.stderr
    assert json.loads(down.stdout)["state"] == "down"


def test_status_never_starts_the_embedded_redis(settings: Settings) -> None:
    """Not running is the answer (down), not something for a status check to change."""
    result = run("status", "--json")

    assert result.returncode == 3
    assert "is not running" in json.loads(result.stdout)["reasons"][0]
    assert not (settings.redis_dir / "redis.pid").exists()
    assert check_health(settings).state is State.DOWN


def test_no_live_table_is_down(live_redis: Settings) -> None:
    found = check_health(live_redis)
    assert found.state is State.DOWN and "no table is live" in found.reasons[0]


def test_services_exit_3_when_the_redis_it_is_given_does_not_answer(settings: Settings) -> None:
    result = run("services", "--json", INBO_REDIS_URL="redis://127.0.0.1:1/0")

    assert result.returncode == 3
    shown = json.loads(result.stdout)
    assert shown["state"] == "down" and shown["redis"]["running"] is False


def test_services_exit_0_with_a_running_redis(live_redis: Settings) -> None:
    result = run("services", "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["redis"]["running"] is True
