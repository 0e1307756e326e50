"""Shared fixtures: isolated settings per test, one small simulated world, one real Redis server.

Airflow is pointed at a throw-away home (the repo's airflow.cfg and dags/, a temporary metadata
DB) before anything imports it, and the platform's var dir defaults to a session directory, so
tests never touch the developer's var/. The session fails if they did anyway, or if a
redis-server started by a test is still running when it ends (`pytest_sessionfinish`).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inbo.settings import REPO_ROOT, Settings, get_settings

DEVELOPER_STATE = sorted(
    {REPO_ROOT / "var", Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))} - {REPO_ROOT}
)
"""What the suite must leave alone: the repo's var/ and the developer's own AIRFLOW_HOME (when
that is the repo, its Airflow state is under var/)."""

SESSION_DIR = Path(tempfile.mkdtemp(prefix="inbo-tests-"))
os.environ["AIRFLOW_HOME"] = str(SESSION_DIR / "airflow")
os.environ["AIRFLOW_CONFIG"] = str(REPO_ROOT / "airflow.cfg")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ.pop("MLFLOW_TRACKING_URI", None)
for name in [key for key in os.environ if key.startswith("INBO_")]:
    os.environ.pop(name)
os.environ["INBO_VAR_DIR"] = str(SESSION_DIR / "var")  # a test without `settings` writes here
# Airflow 3.3.2's dag.test() fails after a successful run of a DAG with a deadline (see
# dags/common.run_deadline); tests/test_alert_callbacks.py gives its probe DAGs their own.
os.environ["INBO_NIGHTLY_DEADLINE_MINUTES"] = "0"
os.environ["INBO_HOURLY_DEADLINE_MINUTES"] = "0"


def file_states(folders: list[Path]) -> dict[Path, tuple[int, int]]:
    """Size and modification time of every file under `folders`."""
    return {
        path: (stat.st_size, stat.st_mtime_ns)
        for folder in folders
        for path in folder.rglob("*")
        if (stat := path.lstat())
    }


def redis_servers_under(folders: list[Path]) -> dict[int, Path]:
    """Running redis-server processes whose data directory (their cwd) is under `folders`."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != "redis-server":
                continue
            cwd = (proc / "cwd").resolve(strict=True)
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
        if any(cwd.is_relative_to(folder.resolve()) for folder in folders):
            found[int(proc.name)] = cwd
    return found


STATE_BEFORE = file_states(DEVELOPER_STATE)
REDIS_BEFORE = redis_servers_under(DEVELOPER_STATE)
TEST_DIRS = [SESSION_DIR]
"""Where tests keep state: the session directory, and pytest's base temp (added once known)."""


@pytest.fixture(scope="session", autouse=True)
def _test_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    TEST_DIRS.append(tmp_path_factory.getbasetemp())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if it changed the developer's state or left a redis-server running. Servers
    left under the tests' directories are stopped, so the next run starts clean."""
    after = file_states(DEVELOPER_STATE)
    changed = sorted(
        str(p) for p in STATE_BEFORE.keys() | after.keys() if STATE_BEFORE.get(p) != after.get(p)
    )
    problems = [f"the suite changed {path}" for path in changed[:20]]
    for pid, cwd in redis_servers_under([*TEST_DIRS, *DEVELOPER_STATE]).items():
        if pid in REDIS_BEFORE:
            continue
        ours = any(cwd.is_relative_to(folder.resolve()) for folder in TEST_DIRS)
        if ours:
            os.kill(pid, signal.SIGTERM)
        problems.append(
            f"redis-server {pid} (data in {cwd}) was left running"
            + ("; stopped it" if ours else "")
        )
    if problems:
        session.config.get_terminal_writer().line("\n".join(problems), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
