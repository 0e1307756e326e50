"""The key index of a table version: every data key it owns, recorded before the key is written.

A control key (`index:<version>`, a hash in the `{<prefix>}` slot) holds, per field, the ids of a
kind of data key: `u:<shard>` the users a shard staged, `similar` and `fallback` what the version
began with, `u:<batch>` and `similar:<batch>` what an hourly refresh added. A writer records ids
before writing their keys, so a crash at any point leaves no key the index does not name; the index
may name a key that was never written, which costs nothing. Deleting, checking or counting a
version's keys then touches only that version's keys, never a SCAN of the whole keyspace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pipelines.publish.contract import SIMILAR, USERS, Keys
from pipelines.publish.redis_io import text

if TYPE_CHECKING:
    import redis

FALLBACK = "fallback"


def record(
    client: redis.Redis, keys: Keys, version: str, field: str, ids: Iterable[int] = ()
) -> None:
    """Note that `version` owns the keys of `ids` under `field` (`u:<shard>`, `similar`, ...)."""
    client.hset(keys.index(version), field, ",".join(str(int(i)) for i in ids))


def owned_keys(client: redis.Redis, keys: Keys, version: str) -> list[str]:
    """Every data key the index says `version` owns (users, similar items, fallback), sorted."""
    found: set[str] = set()
    for raw_field, raw_ids in client.hgetall(keys.index(version)).items():
        field, ids = text(raw_field), text(raw_ids)
        if field == FALLBACK:
            found.add(keys.fallback(version))
            continue
        segment = SIMILAR.segment if field.startswith("similar") else USERS.segment
        found.update(keys.member(version, segment, int(i)) for i in ids.split(",") if i)
    return sorted(found)
