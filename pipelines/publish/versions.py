"""Writing a table version into Redis: reserve it, stage its shards, verify it, refresh it hourly.

A nightly run writes a whole new version next to the live one (`begin_table`, then
`stage_shard` per user shard) and checks it (`verify_table`); `pipelines.publish.lifecycle` then
makes it live, retires, rolls back and deletes versions. The hourly job rewrites active users'
keys inside the live version with `refresh_users`. Every writer records the ids of the keys it
is about to write in the version's key index (`pipelines.publish.index`) before writing them,
so whatever a crash leaves behind, garbage collection can find and delete it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from redis.exceptions import WatchError

from inbo.errors import PublishConflict, PublishError
from inbo.faults import crash_point
from inbo.reasons import REASONS
from inbo.shards import shard_key, user_shard
from pipelines.publish import index
from pipelines.publish.checks import (
    check_exist,
    check_meta,
    check_payload,
    check_similar_payload,
    shard_records,
    totalled,
)
from pipelines.publish.contract import (
    CONTRACT_REVISION,
    CONTRACT_VERSION,
    FALLBACK_COLUMNS,
    SIMILAR,
    STAGING,
    USER_COLUMNS,
    USERS,
    VERIFIED,
    Keys,
    reason_records,
    reasons_of,
)
from pipelines.publish.packing import as_table, pack, pack_similar, prepared_similar, ranked_lists
from pipelines.publish.redis_io import (
    now,
    pipelined,
    pointer,
    read_meta,
    replace,
    reproducible_sample,
    stage,
    utc_text,
    write_meta,
)

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

_BATCH = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ShardReport:
    """What `stage_shard` wrote; `write_seconds` is the part spent in Redis calls (the rest is
    checking and packing)."""

    version: str
    shard: int
    users: int
    items: int
    bytes: int
    seconds: float
    write_seconds: float


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_table` checked."""

    version: str
    users_checked: int
    similar_checked: int
    sampled: int
    seconds: float


@dataclass(frozen=True)
class RefreshReport:
    """What `refresh_users` wrote into the live version."""

    version: str
    users: int
    new_users: int
    similar_items: int
    bytes: int
    seconds: float


def begin_table(
    client: redis.Redis,
    prefix: str,
    fallback: pd.DataFrame,
    *,
    batch: str,
    shards: int,
    models: dict[str, Any],
    batch_size: int,
    generated_at: datetime,
    similar: pd.DataFrame | None = None,
    experiments: dict[str, str] | None = None,
) -> str:
    """Reserve a new version for `shards` user shards and stage its fallback and similar items.

    The meta record (status `staging`) fixes what every shard shares: the reason templates, the
    shard count and `generated_at`. `similar` has columns item_id, similar_item_id, score; each
    item's list is ranked by score, best first (ties by similar_item_id). `experiments` maps
    each variant label the version's payloads carry to the policy it serves.
    """
    if not _BATCH.fullmatch(batch):
        raise PublishError(f"batch {batch!r} may only contain letters, digits, '_', '.', '-'")
    if shards < 1:
        raise PublishError(f"shards must be at least 1, not {shards}")
    keys = Keys(prefix)
    stamp = utc_text(generated_at)
    if "reason_ref" not in fallback.columns:  # scoring's fallback (trending) needs no refs
        fallback = fallback.assign(reason_ref=np.nan)
    lists = ranked_lists(as_table(fallback, FALLBACK_COLUMNS, "fallback"), REASONS, "fallback")
    if len(lists.owners) == 0:
        raise PublishError("the fallback list is empty; users without a row would get nothing")
    fallback_payload = pack(lists, stamp)[0]
    item_ids, similar_payloads = pack_similar(prepared_similar(similar), stamp)
    meta = {
        "contract_version": CONTRACT_VERSION,
        "contract_revision": CONTRACT_REVISION,
        "batch": batch,
        "created_at": now(),
        "generated_at": stamp,
        "status": STAGING,
        "models": _json_safe(models),
        "shards": shards,
        "reasons": reason_records(),
        "counts": {
            "users": 0,
            "items": 0,
            "fallback_items": len(lists.refs),
            "similar_items": len(item_ids),
        },
        "bytes": len(fallback_payload) + sum(map(len, similar_payloads)),
        "refreshes": 0,
        "experiments": experiments or {},
    }
    version = _reserve_version(client, keys, meta)
    index.record(client, keys, version, index.FALLBACK)
    index.record(client, keys, version, "similar", item_ids)
    stage(
        client,
        [keys.fallback(version), *(keys.similar(version, i) for i in item_ids)],
        [fallback_payload, *similar_payloads],
        batch_size,
    )
    log.info("began %s: %d shards, %d similar-items lists", version, shards, len(item_ids))
    return version


def stage_shard(
    client: redis.Redis,
    prefix: str,
    version: str,
    recs: pd.DataFrame | pa.Table,
    *,
    shard: int,
    shards: int,
    batch_size: int,
) -> ShardReport:
    """Write one shard's user keys into a version being staged, then record the shard as done.

    Idempotent: user keys are named by user id and the record by shard number, so a retried task
    rewrites the same keys and the same record. The ids go into the key index first and the
    record last: a shard that died midway has none, and `verify_table` refuses the version until
    the retry succeeds.
    """
    started = time.perf_counter()
    keys = Keys(prefix)
    meta = read_meta(client, keys, version)
    if meta["status"] != STAGING:
        raise PublishError(f"version {version} is {meta['status']}; shards go into a staging one")
    if meta["shards"] != shards:
        raise PublishError(f"version {version} has {meta['shards']} shards, not {shards}")
    lists = ranked_lists(as_table(recs, USER_COLUMNS, "recs"), reasons_of(meta), "recs")
    foreign = lists.owners[user_shard(lists.owners, shards) != shard]
    if len(foreign):
        raise PublishError(
            f"{len(foreign)} users of shard {shard_key(shard, shards)} belong to other shards "
            f"(first: {', '.join(map(str, foreign[:5].tolist()))})"
        )
    payloads = pack(lists, meta["generated_at"])
    names = [keys.user(version, uid) for uid in lists.owners.tolist()]
    writing = time.perf_counter()
    index.record(client, keys, version, f"u:{shard}", lists.owners.tolist())
    crash_point("stage.after_index")
    half = len(names) // 2
    stage(client, names[:half], payloads[:half], batch_size)
    crash_point("stage.midway")
    stage(client, names[half:], payloads[half:], batch_size)
    record = {"users": len(names), "items": len(lists.refs), "bytes": sum(map(len, payloads))}
    client.hset(keys.shards(version), str(shard), json.dumps(record))
    done = time.perf_counter()
    report = ShardReport(
        version, shard, **record, seconds=done - started, write_seconds=done - writing
    )
    log.info("staged shard %d/%d of %s: %s", shard, shards, version, report)
    return report


def verify_table(
    client: redis.Redis,
    prefix: str,
    version: str,
    *,
    expected_users: Mapping[int, Iterable[int]],
    expected_similar: Iterable[int] = (),
    sample: int = 200,
) -> VerifyReport:
    """Check a staged version is complete and well formed; mark it verified or raise PublishError.

    `expected_users` maps every shard number to the user ids of its file. Every shard must be
    recorded in the registry with that many users, every user and every item of
    `expected_similar` must have its key (EXISTS in batches), and up to `sample` user payloads,
    `sample` similar-items payloads, the fallback and the meta record must be valid. The first
    successful check totals the registry into the meta record's counts.
    """
    started = time.perf_counter()
    keys = Keys(prefix)
    meta = read_meta(client, keys, version)
    records = shard_records(client, keys, version, meta["shards"])
    if set(expected_users) != set(records):
        raise PublishError(
            f"version {version} has shards 0..{meta['shards'] - 1}, "
            f"users were given for {sorted(expected_users)}"
        )
    user_keys = []
    for shard, ids in sorted(expected_users.items()):
        unique = list(dict.fromkeys(map(int, ids)))
        if records[shard]["users"] != len(unique):
            raise PublishError(
                f"shard {shard} of {version} staged {records[shard]['users']} users, "
                f"its file has {len(unique)}"
            )
        user_keys += [keys.user(version, uid) for uid in unique]
    similar_keys = [keys.similar(version, i) for i in dict.fromkeys(map(int, expected_similar))]
    if meta["counts"]["similar_items"] != len(similar_keys):
        raise PublishError(
            f"version {version} staged {meta['counts']['similar_items']} similar-items lists, "
            f"expected {len(similar_keys)}"
        )
    check_exist(client, version, USERS, user_keys)
    check_exist(client, version, SIMILAR, similar_keys)
    picked = reproducible_sample(user_keys, sample, seed=version)
    picked_similar = reproducible_sample(similar_keys, sample, seed=f"{version}:similar")
    user_side = [*picked, keys.fallback(version)]
    raws = pipelined(client, "get", [*user_side, *picked_similar])
    reasons = reasons_of(meta)
    for key, raw in zip(user_side, raws[: len(user_side)], strict=True):
        check_payload(key, raw, reasons)
    for key, raw in zip(picked_similar, raws[len(user_side) :], strict=True):
        check_similar_payload(key, raw)
    if meta["status"] == STAGING:
        meta = totalled(meta, records)
        check_meta(meta, version)
        write_meta(client, keys, {**meta, "status": VERIFIED})
    report = VerifyReport(
        version,
        len(user_keys),
        len(similar_keys),
        len(picked) + len(picked_similar),
        time.perf_counter() - started,
    )
    log.info("verified %s: %s", version, report)
    return report


def refresh_users(
    client: redis.Redis,
    prefix: str,
    version: str,
    recs: pd.DataFrame | pa.Table,
    *,
    through: str,
    generated_at: datetime,
    batch_size: int,
    similar: pd.DataFrame | None = None,
) -> RefreshReport:
    """Replace the given users' keys in the live `version`, one SET each; add `similar` lists.

    The caller holds the publish lock. `PublishConflict` unless `version` is live, checked before
    writing and again, under WATCH, when the meta record's counts, `refreshed_through`,
    `refreshed_at` and `refreshes` are updated: a later rollback to this version still counts its
    keys right. A crash midway leaves the mark where it was, so the next run writes them again.
    """
    started = time.perf_counter()
    keys = Keys(prefix)
    current = pointer(client, keys)
    if current != version:
        raise PublishConflict(f"{version} is not the live version ({current}); score again")
    meta = read_meta(client, keys, version)
    stamp = utc_text(generated_at)
    lists = ranked_lists(as_table(recs, USER_COLUMNS, "recs"), reasons_of(meta), "recs")
    payloads = pack(lists, stamp)
    item_ids, similar_payloads = pack_similar(prepared_similar(similar), stamp)
    users = lists.owners.tolist()
    index.record(client, keys, version, f"u:{through}", users)
    index.record(client, keys, version, f"similar:{through}", item_ids)
    names = [keys.user(version, u) for u in users]
    half = len(names) // 2
    old = replace(client, names[:half], payloads[:half], batch_size)
    crash_point("refresh.midway")
    old += replace(client, names[half:], payloads[half:], batch_size)
    old_similar = replace(
        client, [keys.similar(version, i) for i in item_ids], similar_payloads, batch_size
    )
    written = sum(map(len, payloads)) + sum(map(len, similar_payloads))
    change = {
        "users": sum(raw is None for raw in old),
        "items": len(lists.refs) - sum(len(json.loads(raw)["items"]) for raw in old if raw),
        "similar_items": sum(raw is None for raw in old_similar),
        "bytes": written - sum(len(raw) for raw in [*old, *old_similar] if raw),
    }
    _update_live_meta(client, keys, version, change, through)
    report = RefreshReport(
        version,
        len(payloads),
        change["users"],
        len(item_ids),
        written,
        time.perf_counter() - started,
    )
    log.info("refreshed %s through %s: %s", version, through, report)
    return report


def _reserve_version(client: redis.Redis, keys: Keys, meta: dict[str, Any]) -> str:
    """A new version id `<batch>-<6 hex>`, claimed by creating its meta key with SET NX, and
    listed in the versions set in the same transaction (both in the control slot)."""
    for _ in range(5):
        version = f"{meta['batch']}-{secrets.token_hex(3)}"
        if client.exists(keys.meta(version)):
            continue
        with client.pipeline(transaction=True) as pipe:
            pipe.set(keys.meta(version), json.dumps({"version": version, **meta}), nx=True)
            pipe.zadd(keys.versions, {version: time.time()})
            created, _ = pipe.execute()
        if created:
            return version
    raise PublishError(f"could not find an unused version id for batch {meta['batch']}")


def _update_live_meta(
    client: redis.Redis, keys: Keys, version: str, change: dict[str, int], through: str
) -> None:
    """Add `change` to the live version's counts and bytes and record the refresh, atomically.

    WATCH on the pointer and the meta (one slot) makes a concurrent switch a `PublishConflict`.
    """
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(keys.current, keys.meta(version))
            if pointer(pipe, keys) != version:
                raise PublishConflict(f"{version} stopped being live during the refresh")
            meta = read_meta(pipe, keys, version)
            counts = {**meta["counts"]}
            for name in ("users", "items", "similar_items"):
                counts[name] += change[name]
            meta = {
                **meta,
                "counts": counts,
                "bytes": meta["bytes"] + change["bytes"],
                "refreshed_through": through,
                "refreshed_at": now(),
                "refreshes": meta.get("refreshes", 0) + 1,
            }
            pipe.multi()
            pipe.set(keys.meta(version), json.dumps(meta))
            pipe.execute()
        except WatchError:
            raise PublishConflict(f"the live table changed while refreshing {version}") from None


def _json_safe(models: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(models, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PublishError(f"models must be plain JSON (names to versions): {exc}") from None
    return models
