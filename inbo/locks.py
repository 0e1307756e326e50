"""Locks shared by the nightly and hourly DAGs (and the CLI), held in Redis.

The lake's watermarks and the live table are each changed by one run at a time: `ingest` and
`validate` take the `ingest` lock, switching the live table (activate, rollback) and writing into
it (the hourly refresh) take the `publish` lock. A Redis lock works the same under every Airflow
executor and from a notebook; it expires after `lock_timeout_seconds`, so a run killed while
holding it blocks the others for at most that long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from inbo.errors import LockBusy
from inbo.services import redis_connection
from inbo.settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

INGEST = "ingest"
PUBLISH = "publish"


def lock_key(prefix: str, name: str) -> str:
    return f"{prefix}:lock:{name}"


@contextmanager
def held(
    client: redis.Redis,
    prefix: str,
    name: str,
    *,
    timeout_seconds: float,
    wait_seconds: float,
) -> Iterator[None]:
    """Hold lock `name` for the block; wait up to `wait_seconds` for it, else raise `LockBusy`."""
    lock = client.lock(
        lock_key(prefix, name),
        timeout=timeout_seconds,
        blocking=True,
        blocking_timeout=wait_seconds,
    )
    started = time.monotonic()
    if not lock.acquire():
        raise LockBusy(
            f"the {name} lock ({lock_key(prefix, name)}) is still held after {wait_seconds:.0f} s "
            "by another run; try again when it is done"
        )
    waited = time.monotonic() - started
    if waited > 1:
        log.info("waited %.1f s for the %s lock", waited, name)
    try:
        yield
    finally:
        if lock.owned():
            lock.release()
        else:
            log.warning("the %s lock expired while held (longer than its timeout)", name)


@contextmanager
def platform_lock(settings: Settings, name: str) -> Iterator[None]:
    """`held` on the platform's Redis with the configured timeout and wait."""
    with (
        redis_connection(settings) as client,
        held(
            client,
            settings.redis_prefix,
            name,
            timeout_seconds=settings.lock_timeout_seconds,
            wait_seconds=settings.lock_wait_seconds,
        ),
    ):
        yield
