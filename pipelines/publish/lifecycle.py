"""A table version's transitions: made live, retired, rolled back, deleted, and garbage collected.

The states (`pipelines.publish.contract`): staging -> verified -> live -> retired or rolled_back
-> expiring -> gone. Each transition that moves the pointer writes every control key it changes
(pointer, the new live meta, the old live meta) in one MULTI/EXEC under WATCH: they share one hash
slot, so a crash leaves the old state or the new one, never half of each, and readers switch in
one step. Data keys carry no TTL and are never touched by a switch, so activation costs the same
whatever Redis holds. Deletion goes through the version's key index: mark it `expiring`, unlink
its keys, then drop its control keys in one transaction; a crash midway is finished by the next
`collect_garbage`, which also deletes what outlived its time: a former live version after the
rollback window, a version that never went live after `STAGING_HORIZON_SECONDS`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.exceptions import WatchError

from inbo.errors import PublishError
from inbo.faults import crash_point
from pipelines.publish import index
from pipelines.publish.checks import check_exist
from pipelines.publish.contract import (
    EXPIRED,
    EXPIRING,
    FORMER_LIVE,
    LIVE,
    RETIRED,
    ROLLED_BACK,
    STAGING_HORIZON_SECONDS,
    USERS,
    VERIFIED,
    Keys,
)
from pipelines.publish.redis_io import now, pipelined, pointer, read_meta, text

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionInfo:
    """One table version as `inbo versions` lists it. `expires_in`: seconds until garbage
    collection may delete it (None while it is live, 0 when it is due)."""

    version: str
    created_at: str | None
    status: str
    users: int | None
    live: bool
    expires_in: int | None


def activate(
    client: redis.Redis, prefix: str, version: str, *, moment: datetime | None = None
) -> str | None:
    """Make a verified version live and retire the one it replaces, in one transaction; return
    the replaced version (None for the first). Calling it again for the live version does
    nothing (safe for task retries)."""
    keys = Keys(prefix)
    meta = read_meta(client, keys, version)
    current = pointer(client, keys)
    if current == version:
        log.info("%s is already live", version)
        return meta.get("previous_version")
    if meta["status"] != VERIFIED:
        raise PublishError(f"version {version} is {meta['status']}; verify_table must pass first")
    stamp = now(moment)
    live = {**meta, "status": LIVE, "activated_at": stamp, "previous_version": current}
    crash_point("activate.before_switch")
    _switch(client, keys, version, live, current, RETIRED, stamp)
    crash_point("activate.after_switch")
    log.info("activated %s (replaced %s)", version, current)
    return current


def rollback(
    client: redis.Redis, prefix: str, to: str | None = None, *, moment: datetime | None = None
) -> tuple[str, str]:
    """Make the version live before the current one (or `to`) live again; return (from, to).

    The target must be a former live version whose keys are all still there (checked through
    its key index); the version rolled back from becomes `rolled_back`, kept for the rollback
    window like a retired one. Rolling back twice walks further back; rolling back to a named
    version that is already live does nothing (a retry of one that went through).
    """
    keys = Keys(prefix)
    current = pointer(client, keys)
    if current is None:
        raise PublishError(f"no live table under {keys.root}; nothing to roll back")
    target = to or read_meta(client, keys, current).get("previous_version")
    if target is None:
        raise PublishError(f"{current} was the first version; there is nothing to roll back to")
    if target == current:  # a retried rollback to a named version that already went through
        log.info("%s is already live", target)
        return current, target
    meta = read_meta(client, keys, target)
    if meta["status"] not in FORMER_LIVE:
        raise PublishError(f"{target} is {meta['status']}, not a former live version")
    check_exist(client, target, USERS, index.owned_keys(client, keys, target))
    stamp = now(moment)
    restored = {**meta, "status": LIVE, "activated_at": stamp}
    _switch(client, keys, target, restored, current, ROLLED_BACK, stamp)
    crash_point("rollback.after_switch")
    log.warning("rolled back from %s to %s", current, target)
    return current, target


def collect_garbage(
    client: redis.Redis,
    prefix: str,
    *,
    rollback_window_seconds: int,
    moment: datetime | None = None,
) -> list[str]:
    """Delete every version past its time, and finish any deletion a crash interrupted; return
    the versions deleted. The live version is never touched.

    Also the recovery pass that activation, rollback and publishing run first: after it, no
    version is half deleted and none outlives its window.
    """
    keys = Keys(prefix)
    live = pointer(client, keys)
    at = moment or datetime.now(UTC)
    deleted = []
    for version in [text(m) for m in client.zrange(keys.versions, 0, -1)]:
        if version == live:
            continue
        raw = client.get(keys.meta(version))
        meta = json.loads(raw) if raw is not None else None
        if meta is None or _due(meta, at, rollback_window_seconds) <= 0:
            delete(client, keys, version)
            deleted.append(version)
    if deleted:
        log.info("garbage collected %d versions: %s", len(deleted), ", ".join(deleted))
    return deleted


def delete_version(client: redis.Redis, prefix: str, version: str) -> int:
    """Delete a version that is not live, whatever its state; return the data keys removed."""
    keys = Keys(prefix)
    if pointer(client, keys) == version:
        raise PublishError(f"{version} is live; activate or roll back to another version first")
    if not client.exists(keys.meta(version)) and not client.zscore(keys.versions, version):
        raise PublishError(f"there is no version {version} under {keys.root}")
    return delete(client, keys, version)


def delete(client: redis.Redis, keys: Keys, version: str) -> int:
    """Mark `version` expiring, unlink the data keys its index names, then drop its control keys
    and its entry in the versions set in one transaction. Re-running it finishes it."""
    raw = client.get(keys.meta(version))
    if raw is not None:
        meta = json.loads(raw)
        if meta.get("status") != EXPIRING:
            client.set(keys.meta(version), json.dumps({**meta, "status": EXPIRING}))
    owned = index.owned_keys(client, keys, version)
    half = len(owned) // 2
    removed = sum(pipelined(client, "unlink", owned[:half]))
    crash_point("gc.midway")
    removed += sum(pipelined(client, "unlink", owned[half:]))
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.index(version), keys.shards(version), keys.meta(version))
        pipe.zrem(keys.versions, version)
        pipe.execute()
    log.info("deleted %s (%d data keys)", version, removed)
    return int(removed)


def list_versions(
    client: redis.Redis,
    prefix: str,
    *,
    rollback_window_seconds: int,
    moment: datetime | None = None,
) -> list[VersionInfo]:
    """Known versions, newest first."""
    keys = Keys(prefix)
    live = pointer(client, keys)
    at = moment or datetime.now(UTC)
    members = [text(m) for m in client.zrange(keys.versions, 0, -1, desc=True)]
    raws = pipelined(client, "get", [keys.meta(m) for m in members])
    rows = []
    for version, raw in zip(members, raws, strict=True):
        meta = json.loads(raw) if raw is not None else {}
        due = None if version == live or not meta else _due(meta, at, rollback_window_seconds)
        rows.append(
            VersionInfo(
                version=version,
                created_at=meta.get("created_at"),
                status=meta.get("status", EXPIRED),
                users=meta.get("counts", {}).get("users"),
                live=version == live,
                expires_in=None if due is None else max(0, int(due)),
            )
        )
    return rows


def live_meta(client: redis.Redis, prefix: str) -> dict[str, Any] | None:
    """The meta record of the live version; None if nothing is live."""
    keys = Keys(prefix)
    version = pointer(client, keys)
    return None if version is None else read_meta(client, keys, version)


def _due(meta: dict[str, Any], at: datetime, rollback_window_seconds: int) -> float:
    """Seconds until a non-live version may be deleted (negative or 0: due now)."""
    if meta.get("status") == EXPIRING:
        return 0.0
    if meta.get("status") in FORMER_LIVE:
        since, allowed = meta.get("retired_at") or meta["created_at"], rollback_window_seconds
    else:  # staging or verified: a run that never activated it
        since, allowed = meta["created_at"], STAGING_HORIZON_SECONDS
    start = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (start + timedelta(seconds=allowed) - at).total_seconds()


def _switch(
    client: redis.Redis,
    keys: Keys,
    version: str,
    meta: dict[str, Any],
    replaced: str | None,
    replaced_status: str,
    stamp: str,
) -> None:
    """Point `current` at `version`, store its live meta and mark the version it replaces, in
    one transaction (one slot). WATCH on the pointer turns a concurrent switch by another run
    into a clear error instead of one run silently retiring the other's version."""
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(keys.current)
            if pointer(pipe, keys) != replaced:
                raise WatchError
            old = read_meta(pipe, keys, replaced) if replaced else None
            pipe.multi()
            pipe.set(keys.current, version)
            pipe.set(keys.meta(version), json.dumps(meta))
            if old is not None:
                retired = {**old, "status": replaced_status, "retired_at": stamp}
                pipe.set(keys.meta(str(replaced)), json.dumps(retired))
            pipe.execute()
        except WatchError:
            raise PublishError(
                f"the live version changed while switching to {version}; re-run the step"
            ) from None
