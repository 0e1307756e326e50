"""`inbo health`: every dependency checked against the real services, one verdict and exit code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from inbo.lake import Lake, batch_key
from inbo.settings import Settings
from pipelines.monitoring.health import Level, check_components, persistence_problems
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


def by_name(settings: Settings, now: datetime) -> dict[str, object]:
    return {check.name: check for check in check_components(settings, now=now).checks}


def test_levels_exit_0_1_2() -> None:
    assert [level.exit_code for level in Level] == [0, 1, 2]


def test_a_live_table_on_a_reachable_redis_is_ok_and_its_age_is_the_check_value(
    published: Settings,
) -> None:
    checks = by_name(published, now=BATCH_END + timedelta(hours=1))

    assert checks["redis"].level is Level.OK and checks["redis"].value > 0  # used_memory bytes
    live = checks["live_table"]
    assert live.level is Level.OK and "40 users" in live.detail
    assert live.value == pytest.approx(3600.0)


def test_a_stale_table_degrades_and_a_missing_redis_is_down(published: Settings) -> None:
    late = BATCH_END + timedelta(seconds=published.stale_after_seconds + 60)
    stale = check_components(published, now=late)

    assert {c.name: c.level for c in stale.checks}["live_table"] is Level.DEGRADED
    assert stale.level is Level.DEGRADED


def test_nothing_here_yet_reports_every_check_without_creating_anything(settings: Settings) -> None:
    """No Airflow DB, no app DB, no batch: each says so; reading creates no SQLite file."""
    report = check_components(settings)
    checks = {c.name: c for c in report.checks}

    assert list(checks) == [
        "redis",
        "live_table",
        "nightly_run",
        "hourly_run",
        "mlflow_registry",
        "app_database",
        "stream_worker",
        "last_batch",
        "reconciliation",
    ]
    assert report.level is Level.DOWN and checks["redis"].level is Level.DOWN
    assert "never run" in checks["nightly_run"].detail
    assert "no database at" in checks["app_database"].detail
    assert checks["last_batch"].level is Level.DEGRADED
    assert not (settings.var_dir / "airflow" / "airflow.db").exists()
    assert not (settings.var_dir / "app" / "inbo_app.db").exists()
    assert not (settings.var_dir / "mlflow" / "mlflow.db").exists()


def test_health_cli_exits_with_the_level_and_prints_json(published: Settings) -> None:
    down = run("health", "--json", INBO_REDIS_URL="redis://127.0.0.1:1/0")
    degraded = run("health")

    assert down.returncode == 2, down.stderr
    shown = json.loads(down.stdout)
    assert shown["level"] == "down"
    assert {c["name"]: c["level"] for c in shown["checks"]}["redis"] == "down"
    assert degraded.returncode == 1, degraded.stderr  # no Airflow runs, no ingested batch
    assert "nightly_run" in degraded.stdout and "degraded" in degraded.stdout


def test_persistence_problems_name_failing_saves_and_a_server_that_would_lose_everything() -> None:
    assert persistence_problems({"aof_enabled": 1, "aof_last_write_status": "ok"}) == []
    failing = persistence_problems({"aof_enabled": 1, "aof_last_write_status": "err"})
    assert failing == ["aof_last_write_status is err"]
    volatile = persistence_problems({"aof_enabled": 0, "rdb_saves": 0})
    assert "a restart loses every table" in volatile[0]
