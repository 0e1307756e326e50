"""Locks shared by the nightly and hourly DAGs (and the CLI), held in Redis as renewed leases.

The lake's watermarks and the live table are each changed by one run at a time: `ingest` and
`validate` take the `ingest` lock, switching the live table (activate, rollback, gc) and writing
into it (the hourly refresh) take the `publish` lock. A Redis lock works the same under every
Airflow executor and from a notebook. Its key lives `lock_lease_seconds` (30 s by default) and a
thread of the holder renews it every third of that, so a run that is killed frees the lock within
one lease, while a long step keeps it as long as it is alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from inbo.errors import LockBusy
from inbo.services import redis_connection
from inbo.settings import Settings

if TYPE_CHECKING:
    import redis
    from redis.lock import Lock

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
    lease_seconds: float,
    wait_seconds: float,
) -> Iterator[None]:
    """Hold lock `name` for the block, renewing its lease; wait up to `wait_seconds` for it,
    else raise `LockBusy`."""
    lock = client.lock(
        lock_key(prefix, name),
        timeout=lease_seconds,
        blocking=True,
        blocking_timeout=wait_seconds,
        thread_local=False,  # the renewing thread acts for the holder
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
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(lock, name, lease_seconds, stop), name=f"lease-{name}", daemon=True
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if lock.owned():
            lock.release()
        else:
            log.warning("the %s lock's lease ran out while held (its renewals failed)", name)


def _renew(lock: Lock, name: str, lease_seconds: float, stop: threading.Event) -> None:
    """Reset the lease to its full length every third of it until `stop`; a renewal that fails
    (Redis unreachable for a moment) is retried at the next beat."""
    import redis

    while not stop.wait(lease_seconds / 3):
        try:
            lock.reacquire()
        except redis.exceptions.LockNotOwnedError:
            log.error("lost the %s lock: its lease expired before it was renewed", name)
            return
        except redis.RedisError as exc:
            log.warning("could not renew the %s lock's lease: %s", name, exc)


@contextmanager
def platform_lock(settings: Settings, name: str) -> Iterator[None]:
    """`held` on the platform's Redis with the configured lease and wait."""
    with (
        redis_connection(settings) as client,
        held(
            client,
            settings.redis_prefix,
            name,
            lease_seconds=settings.lock_lease_seconds,
            wait_seconds=settings.lock_wait_seconds,
        ),
    ):
        yield
