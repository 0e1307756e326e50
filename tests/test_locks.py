"""The Redis locks the nightly and hourly runs share: exclusive, bounded wait, self-expiring."""

from __future__ import annotations

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
    with held(client, prefix, "publish", timeout_seconds=30, wait_seconds=0):
        with (
            pytest.raises(LockBusy, match=r"publish lock .* still held after 2 s") as caught,
            held(client, prefix, "publish", timeout_seconds=30, wait_seconds=2),
        ):
            pass
        assert isinstance(caught.value, ServiceUnavailable)  # the DAGs' retry policy retries it
    with held(client, prefix, "publish", timeout_seconds=30, wait_seconds=0):
        assert client.exists(lock_key(prefix, "publish"))
    assert not client.exists(lock_key(prefix, "publish"))


def test_different_locks_do_not_block_each_other(live_redis: Settings) -> None:
    client = redis_client(live_redis)
    prefix = live_redis.redis_prefix
    with (
        held(client, prefix, "ingest", timeout_seconds=30, wait_seconds=0),
        held(client, prefix, "publish", timeout_seconds=30, wait_seconds=0),
    ):
        assert client.exists(lock_key(prefix, "ingest"), lock_key(prefix, "publish")) == 2


def test_a_lock_whose_holder_died_expires_after_its_timeout(live_redis: Settings) -> None:
    client = redis_client(live_redis)
    prefix = live_redis.redis_prefix
    abandoned = client.lock(lock_key(prefix, "ingest"), timeout=0.5)
    assert abandoned.acquire(blocking=False)  # never released: its holder "died"
    with held(client, prefix, "ingest", timeout_seconds=30, wait_seconds=3):
        assert client.pttl(lock_key(prefix, "ingest")) > 1000
