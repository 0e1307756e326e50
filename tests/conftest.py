"""Shared fixtures: isolated settings per test, one small simulated world, one real Redis server.

Airflow is pointed at a throw-away home (the repo's airflow.cfg and dags/, a temporary metadata
DB) before anything imports it, so tests never touch the developer's var/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inbo.settings import REPO_ROOT, Settings, get_settings

SESSION_DIR = Path(tempfile.mkdtemp(prefix="inbo-tests-"))
os.environ["AIRFLOW_HOME"] = str(SESSION_DIR / "airflow")
os.environ["AIRFLOW_CONFIG"] = str(REPO_ROOT / "airflow.cfg")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ.pop("MLFLOW_TRACKING_URI", None)
for name in [key for key in os.environ if key.startswith("INBO_")]:
    os.environ.pop(name)

WORLD_END = datetime(2026, 11, 20, tzinfo=UTC)
"""The simulated world ends here: the first nightly batch closes at this instant."""


@pytest.fixture(scope="session")
def world_end() -> datetime:
    return WORLD_END


def make_settings(var_dir: Path, **overrides: object) -> Settings:
    return Settings(var_dir=var_dir, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """One embedded redis-server for the whole session; tests isolate themselves by key prefix."""
    from inbo.services import ensure_redis, stop_redis

    settings = make_settings(SESSION_DIR / "redis-home")
    url = ensure_redis(settings)
    yield url
    stop_redis(settings)


@pytest.fixture(scope="session")
def world_template() -> Path:
    """A small simulated app database, generated once and copied by each test that needs it."""
    from pipelines.demo.simulate import simulate

    folder = SESSION_DIR / "world"
    simulate(
        f"sqlite:///{folder / 'app' / 'inbo_app.db'}",
        users=300,
        items=120,
        days=7,
        seed=11,
        end=WORLD_END.replace(tzinfo=None),
        truth_dir=folder / "simulation",
    )
    return folder


@pytest.fixture
def settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """Settings on a fresh var/ for this test, also exported as INBO_* for code that reads env."""
    var_dir = tmp_path / "var"
    monkeypatch.setenv("INBO_VAR_DIR", str(var_dir))
    monkeypatch.setenv("INBO_REDIS_PREFIX", f"t{abs(hash(request.node.nodeid)) % 10**8}")
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would point this test at the last one's DB
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def world(settings: Settings, world_template: Path) -> Settings:
    """`settings` whose app database holds a copy of the simulated world."""
    shutil.copytree(world_template, settings.var_dir, dirs_exist_ok=True)
    return settings


@pytest.fixture
def live_redis(settings: Settings, redis_server: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`settings` publishing to the session's Redis server."""
    monkeypatch.setenv("INBO_REDIS_URL", redis_server)
    get_settings.cache_clear()
    return get_settings()
