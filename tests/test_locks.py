"""The Redis locks the nightly and hourly runs share: exclusive, bounded wait, a renewed lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from inbo.errors import LockBusy, ServiceUnavailable
from inbo.locks import held, lock_key
from inbo.services import redis_client
from inbo.settings import Settings


def test_a_held_lock_makes_the_second_holder_wait_then_fail_retryably(
    live_redis: Settings,
) -> None:
    client = redis_client(live_redis)
    prefix = live_redis.redis_prefix
    with held(client, prefix, "publish", lease_seconds=30, wait_seconds=0):
        with (
            pytest.raises(LockBusy, match=r"publish lock .* still held after 2 s") as caught,
            held(client, prefix, "publish", lease_seconds=30, wait_seconds=2),
        ):
            pass
        assert isinstance(caught.value, ServiceUnavailable)  # the DAGs' retry policy retries it
    with held(client, prefix, "publish", lease_seconds=30, wait_seconds=0):
        assert client.exists(lock_key(prefix, "publish"))
    assert not client.exists(lock_key(prefix, "publish"))


def test_different_locks_do_not_block_each_other(live_redis: Settings) -> None:
    client = redis_client(live_redis)
    prefix = live_redis.redis_prefix
    with (
        held(client, prefix, "ingest", lease_seconds=30, wait_seconds=0),
        held(client, prefix, "publish", lease_seconds=30, wait_seconds=0),
    ):
        assert client.exists(lock_key(prefix, "ingest"), lock_key(prefix, "publish")) == 2


def test_a_holder_keeps_its_lock_for_longer_than_one_lease(live_redis: Settings) -> None:
    """The lease is 0.6 s; the block takes three of them and still owns the lock at the end."""
    client = redis_client(live_redis)
    prefix = live_redis.redis_prefix
    with held(client, prefix, "publish", lease_seconds=0.6, wait_seconds=0):
        time.sleep(1.8)
        assert 0 < client.pttl(lock_key(prefix, "publish")) <= 600
        with (
            pytest.raises(LockBusy),
            held(client, prefix, "publish", lease_seconds=0.6, wait_seconds=0),
        ):
            pass
    assert not client.exists(lock_key(prefix, "publish"))


HOLDER = """
import sys, time
from inbo.locks import held
from inbo.services import redis_client
from inbo.settings import get_settings
settings = get_settings()
with held(redis_client(settings), settings.redis_prefix, "ingest", lease_seconds=2, wait_seconds=0):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_holder_killed_with_sigkill_frees_the_lock_within_one_lease(
    live_redis: Settings,
) -> None:
    client = redis_client(live_redis)
    prefix = live_redis.redis_prefix
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        killed = time.monotonic()
        with held(client, prefix, "ingest", lease_seconds=30, wait_seconds=10):
            freed_after = time.monotonic() - killed
        assert freed_after <= 2.5  # one lease (2 s) and the waiter's polling
    finally:
        holder.kill()
