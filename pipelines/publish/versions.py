"""The life of a table version in Redis: staged, verified, made live, retired, rolled back.

A nightly run writes a whole new version next to the live one (`begin_table`, then
`stage_shard` per user shard), checks it (`verify_table`), then moves one pointer (`activate`).
Readers follow the pointer, so they see the old table or the new one, never a mix, and the old
one stays readable (with a TTL) for `rollback`. The hourly job rewrites active users' keys inside
the live version with `refresh_users`.

Staged keys carry a TTL from the moment they are written and are made permanent only by
`activate`, so a run that dies anywhere before activation cleans up after itself.
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
from inbo.reasons import REASONS
from inbo.shards import shard_key, user_shard
from pipelines.publish.checks import (
    check_exist,
    check_meta,
    check_payload,
    check_similar_payload,
    shard_records,
    totalled,
)
from pipelines.publish.contract import (
    CONTRACT_VERSION,
    EXPIRED,
    FALLBACK_COLUMNS,
    LIVE,
    RETIRED,
    ROLLED_BACK,
    SIMILAR,
    STAGING,
    STAGING_TTL_SECONDS,
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
    scan,
    stage,
    text,
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
    staging_ttl_seconds: int = STAGING_TTL_SECONDS,
) -> str:
    """Reserve a new version for `shards` user shards and stage its fallback and similar items.

    The meta record (status `staging`) fixes what every shard shares: the reason templates, the
    shard count and `generated_at`. `similar` has columns item_id, similar_item_id, score; each
    item's list is ranked by score, best first (ties by similar_item_id).
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
    }
    version = _reserve_version(client, keys, meta, staging_ttl_seconds)
    stage(
        client,
        [keys.fallback(version), *(keys.similar(version, i) for i in item_ids)],
        [fallback_payload, *similar_payloads],
        batch_size,
        staging_ttl_seconds,
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
    staging_ttl_seconds: int = STAGING_TTL_SECONDS,
) -> ShardReport:
    """Write one shard's user keys into a version being staged, then record the shard as done.

    Idempotent: user keys are named by user id and the record by shard number, so a retried task
    rewrites the same keys and the same record. The record is written last: a shard that died
    midway has none, and `verify_table` refuses the version until the retry succeeds.
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
    stage(client, names, payloads, batch_size, staging_ttl_seconds)
    record = {"users": len(names), "items": len(lists.refs), "bytes": sum(map(len, payloads))}
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.shards(version), str(shard), json.dumps(record))
        pipe.expire(keys.shards(version), staging_ttl_seconds)
        pipe.execute()
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


def activate(client: redis.Redis, prefix: str, version: str, ttl_seconds: int) -> str | None:
    """Make a verified version live; return the version it replaced (None for the first).

    Its keys lose their staging TTL and are counted first, so the pointer never moves to an
    incomplete table. The pointer and the meta status change in one MULTI/EXEC. The replaced
    version's keys then expire after `ttl_seconds`, leaving that long to roll back.
    Calling it again for the version already live does nothing (safe for task retries).
    """
    keys = Keys(prefix)
    meta = read_meta(client, keys, version)
    current = pointer(client, keys)
    if current == version:
        log.info("%s is already live", version)
        return meta.get("previous_version")
    if meta["status"] != VERIFIED:
        raise PublishError(f"version {version} is {meta['status']}; verify_table must pass first")
    _persist_complete(client, keys, version, meta["counts"], ttl_seconds)
    live = {**meta, "status": LIVE, "activated_at": now(), "previous_version": current}
    _switch(client, keys, version, live, expected_current=current)
    if current:
        _retire(client, keys, current, RETIRED, ttl_seconds)
    _forget_expired(client, keys)
    log.info("activated %s (replaced %s)", version, current)
    return current


def rollback(
    client: redis.Redis, prefix: str, to: str | None = None, *, ttl_seconds: int
) -> tuple[str, str]:
    """Make the version live before the current one (or `to`) live again; return (from, to).

    The target's keys are made permanent and counted before the pointer moves; the version
    rolled back from expires after `ttl_seconds`. Rolling back twice walks further back.
    """
    keys = Keys(prefix)
    current = pointer(client, keys)
    if current is None:
        raise PublishError(f"no live table under {keys.root}; nothing to roll back")
    target = to or read_meta(client, keys, current).get("previous_version")
    if target is None:
        raise PublishError(f"{current} was the first version; there is nothing to roll back to")
    if target == current:
        raise PublishError(f"{target} is already live")
    meta = read_meta(client, keys, target)
    if meta["status"] not in (RETIRED, ROLLED_BACK):
        raise PublishError(f"{target} is {meta['status']}, not a former live version")
    _persist_complete(client, keys, target, meta["counts"], ttl_seconds)
    restored = {**meta, "status": LIVE, "activated_at": now()}
    _switch(client, keys, target, restored, expected_current=current)
    _retire(client, keys, current, ROLLED_BACK, ttl_seconds)
    log.warning("rolled back from %s to %s", current, target)
    return current, target


def refresh_users(
    client: redis.Redis,
    prefix: str,
    version: str,
    recs: pd.DataFrame,
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
    keys right. Live keys are permanent: no TTL.
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
    old = replace(
        client, [keys.user(version, u) for u in lists.owners.tolist()], payloads, batch_size
    )
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


@dataclass(frozen=True)
class VersionInfo:
    """One table version as `inbo rollback --list` shows it; `expires_in` None: kept for good."""

    version: str
    created_at: str | None
    status: str
    users: int | None
    live: bool
    expires_in: int | None


def list_versions(client: redis.Redis, prefix: str) -> list[VersionInfo]:
    """Known versions, newest first (a version whose keys expired says `expired`)."""
    keys = Keys(prefix)
    live = pointer(client, keys)
    members = [text(m) for m in client.zrange(keys.versions, 0, -1, desc=True)]
    with client.pipeline(transaction=False) as pipe:
        for version in members:
            pipe.get(keys.meta(version))
            pipe.ttl(keys.meta(version))
        replies = pipe.execute()
    rows = []
    for version, raw, ttl in zip(members, replies[::2], replies[1::2], strict=True):
        meta = json.loads(raw) if raw is not None else {}
        rows.append(
            VersionInfo(
                version=version,
                created_at=meta.get("created_at"),
                status=meta.get("status", EXPIRED),
                users=meta.get("counts", {}).get("users"),
                live=version == live,
                expires_in=ttl if ttl >= 0 else None,
            )
        )
    return rows


def delete_version(client: redis.Redis, prefix: str, version: str) -> int:
    """Delete a version that is not live (e.g. a failed run's staged keys); return keys removed."""
    keys = Keys(prefix)
    if pointer(client, keys) == version:
        raise PublishError(f"{version} is live; activate or roll back to another version first")
    found = [*_version_keys(client, keys, version), keys.meta(version), keys.shards(version)]
    removed = sum(pipelined(client, "unlink", found))
    client.zrem(keys.versions, version)
    log.info("deleted %s (%d keys)", version, removed)
    return removed


def live_meta(client: redis.Redis, prefix: str) -> dict[str, Any] | None:
    """The meta record of the live version; None if nothing is live."""
    keys = Keys(prefix)
    version = pointer(client, keys)
    return None if version is None else read_meta(client, keys, version)


def _reserve_version(client: redis.Redis, keys: Keys, meta: dict[str, Any], ttl: int) -> str:
    """A new version id `<batch>-<6 hex>`, claimed by creating its meta key with SET NX."""
    for _ in range(5):
        version = f"{meta['batch']}-{secrets.token_hex(3)}"
        record = {"version": version, **meta}
        if client.set(keys.meta(version), json.dumps(record), ex=ttl, nx=True):
            client.zadd(keys.versions, {version: time.time()})
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


def _persist_complete(
    client: redis.Redis, keys: Keys, version: str, counts: dict[str, int], ttl_seconds: int
) -> None:
    """Remove the TTL of every key of `version`, then check they are all still there.

    Counting after PERSIST is what makes the check final: nothing can expire afterwards. If keys
    are missing, they all get `ttl_seconds` back so the survivors still clean themselves up.
    """
    found = [*_version_keys(client, keys, version), keys.meta(version), keys.shards(version)]
    pipelined(client, "persist", found)
    present = sum(pipelined(client, "exists", found[:-2]))
    has_fallback = bool(client.exists(keys.fallback(version)))
    expected = counts["users"] + counts["similar_items"] + 1
    if present != expected or not has_fallback:
        pipelined(client, "expire", found, ttl_seconds)
        raise PublishError(
            f"version {version} is incomplete ({present} of {expected} keys, fallback "
            f"{'present' if has_fallback else 'missing'}); it may have expired"
        )


def _switch(
    client: redis.Redis,
    keys: Keys,
    version: str,
    meta: dict[str, Any],
    *,
    expected_current: str | None,
) -> None:
    """Point `current` at `version` and store its meta in one transaction (one slot).

    WATCH on the pointer turns a concurrent switch by another run into a clear error instead of
    one run silently retiring the other's version.
    """
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(keys.current)
            if pointer(pipe, keys) != expected_current:
                raise WatchError
            pipe.multi()
            pipe.set(keys.current, version)
            pipe.set(keys.meta(version), json.dumps(meta))
            pipe.execute()
        except WatchError:
            raise PublishError(
                f"the live version changed while switching to {version}; re-run the step"
            ) from None


def _retire(client: redis.Redis, keys: Keys, version: str, status: str, ttl_seconds: int) -> None:
    """Mark a formerly live version and let all its keys expire after `ttl_seconds`."""
    raw = client.get(keys.meta(version))
    if raw is not None:
        meta = {**json.loads(raw), "status": status, "retired_at": now()}
        client.set(keys.meta(version), json.dumps(meta))
    found = [*_version_keys(client, keys, version), keys.meta(version), keys.shards(version)]
    pipelined(client, "expire", found, ttl_seconds)
    log.info("%s is %s; its %d keys expire in %d s", version, status, len(found), ttl_seconds)


def _forget_expired(client: redis.Redis, keys: Keys) -> None:
    """Drop versions whose meta has expired from the versions set."""
    members = [text(m) for m in client.zrange(keys.versions, 0, -1)]
    flags = pipelined(client, "exists", [keys.meta(m) for m in members])
    gone = [m for m, flag in zip(members, flags, strict=True) if not flag]
    if gone:
        client.zrem(keys.versions, *gone)


def _version_keys(client: redis.Redis, keys: Keys, version: str) -> list[str]:
    """The data keys of a version (users, fallback, similar items), by SCAN on every node."""
    return sorted(scan(client, keys.version_pattern(version)))


def _json_safe(models: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(models, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PublishError(f"models must be plain JSON (names to versions): {exc}") from None
    return models
