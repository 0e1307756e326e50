"""Publishing recommendation tables to Redis under the versioned contract v2 (docs/redis-contract.md).

A nightly run writes a whole new table version next to the live one, checks it, then moves one
pointer: `begin_batch` -> `publish_writer` (each writer task stages every n-th user shard with
`publish_shard`) -> `verify_batch` -> `activate_version`. Readers follow the pointer, so they see
the old table or the new one, never a mix, and the old one stays readable (with a TTL) for
`rollback`. The hourly job rewrites active users' keys inside the live version with
`refresh_users`.

Staged keys carry a TTL from the moment they are written and are made permanent only by
`activate`, so a run that dies anywhere before activation cleans up after itself. Control keys
(pointer, versions, meta, shard registry) share one Redis Cluster hash tag so the pointer switch is
one-slot WATCH/MULTI; data keys carry none and are each written by one SET.

Every function takes a redis-py client (`Redis` or `RedisCluster`) made with either
`decode_responses` setting.
"""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from redis.cluster import RedisCluster
from redis.exceptions import WatchError

from inbo.errors import DataNotFound, PublishConflict, PublishError, UnknownUser
from inbo.lake import Lake, batch_key
from inbo.locks import PUBLISH, platform_lock
from inbo.services import masked_url, redis_binary, redis_connection, snapshot
from inbo.settings import REPO_ROOT, Settings, get_settings
from inbo.shards import shard_key, user_shard, writer_shards

if TYPE_CHECKING:
    import redis
    from jsonschema.protocols import Validator

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTRACT_VERSION = 2
STAGING_TTL_SECONDS = 24 * 3600
SCAN_COUNT = 200
"""Keys per SCAN step and per multi-key EXISTS. Each is one command that Redis runs to the end
while every reader waits, so it is kept to ~0.1 ms (2,000 put verify's and activate's read p99
at 4-6 ms at 1M users). Pipelined single-key commands are batched by `PIPELINE_BATCH`."""
PIPELINE_BATCH = 2000
SCHEMA_DIR = REPO_ROOT / "docs" / "schemas"
USER_RECS_SCHEMA = SCHEMA_DIR / "user-recs.v2.schema.json"
META_SCHEMA = SCHEMA_DIR / "recs-meta.v2.schema.json"
SIMILAR_SCHEMA = SCHEMA_DIR / "similar-items.v2.schema.json"
RECS_TABLE = "recs"
"""Lake table of the per-user lists, one file per user shard: `recs/batch=K/shard=<key>/part`."""
SIMILAR_TABLE = "features/more_like_this"
"""Lake table of each item's similar items (item_id, similar_item_id, score), per batch."""
SCORE_REPORTS = "_reports/score"
"""Where scoring records the batch's plan, incl. the models used."""

STAGING, VERIFIED, LIVE, RETIRED, ROLLED_BACK = (
    "staging",
    "verified",
    "live",
    "retired",
    "rolled_back",
)
EXPIRED = "expired"
"""Reported by `list_versions` for a version whose keys are gone; never stored."""

USER_COLUMNS: tuple[str, ...] = (
    "user_id",
    "rank",
    "item_id",
    "source",
    "reason_code",
    "reason_ref",
)
"""The columns of `inbo.schemas.RECOMMENDATIONS` a payload is built from (score and text are not
published: rank is the position, the text is rendered from the code's template)."""
FALLBACK_COLUMNS: tuple[str, ...] = USER_COLUMNS[1:]
SIMILAR_COLUMNS: tuple[str, ...] = ("item_id", "similar_item_id", "score")
ID_COLUMNS = ("user_id", "rank", "item_id", "reason_ref", "similar_item_id")
_BATCH = re.compile(r"[A-Za-z0-9_.-]+")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_SHARD_DIR = re.compile(r"shard=(\d+)of(\d+)")

_STAGE_SCRIPT = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"""
"""SET every key with the staging TTL in one call per batch. Measured on the embedded Redis with
hiredis, one writer and a reader at 1,000 lookups/s: 50-key calls ~195k keys/s with read p99
~0.65 ms; 2,000-key calls ~240k keys/s but p99 ~9 ms (a script blocks every other client);
pipelined SET EX ~135k keys/s."""


@dataclass(frozen=True)
class Reason:
    """How a reason code is shown: the source behind it and its sentence with `{placeholders}`."""

    code: str
    source: str
    template: str

    @property
    def needs_ref(self) -> bool:
        return "{ref" in self.template


REASONS: tuple[Reason, ...] = (
    Reason("continue_reading", "continue_reading", "Continue reading: you are {ref}% through"),
    Reason("because_you_read", "als", "Because you read “{ref_title}”"),
    Reason("similar_to_read", "content", "Because you read “{ref_title}”"),
    Reason("subscribed_publisher", "fresh", "New from {publisher}, which you subscribe to"),
    Reason("popular_in_category", "popularity", "Popular in {category}, a topic you read"),
    Reason("new_this_week", "fresh", "New this week in {category}"),
    Reason("trending", "popularity", "Trending on INBO this week"),
)
"""The texts the models write (models/*.py), as templates. A payload stores each item's index into
this list, as copied into the version's meta record: append new codes, never reorder."""


@dataclass(frozen=True)
class KeyKind:
    """A kind of per-id key in a version (users, similar items), named for the checks' messages."""

    segment: str
    missing: str


USERS = KeyKind("u", "users have no row")
SIMILAR = KeyKind("similar", "items have no similar-items list")


@dataclass(frozen=True)
class Keys:
    """Key names of contract v2 under one prefix; the only place they are spelled out.

    Control keys carry the hash tag `{<prefix>}`: on a Redis Cluster they share one slot, so the
    pointer switch can WATCH and MULTI over them. Data keys carry none and spread over the slots.
    """

    prefix: str

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise PublishError(f"the key prefix {self.prefix!r} may not contain braces")

    @property
    def root(self) -> str:
        return f"{self.prefix}:recs:v{CONTRACT_VERSION}"

    def control(self, name: str) -> str:
        return f"{self.root}:{{{self.prefix}}}:{name}"

    @property
    def current(self) -> str:
        return self.control("current")

    @property
    def versions(self) -> str:
        return self.control("versions")

    def meta(self, version: str) -> str:
        return self.control(f"meta:{version}")

    def shards(self, version: str) -> str:
        """The shard registry: a hash of shard number -> what that shard staged."""
        return self.control(f"shards:{version}")

    def user(self, version: str, user_id: int) -> str:
        return self.member(version, USERS.segment, user_id)

    def similar(self, version: str, item_id: int) -> str:
        """The "more like this" list of one item."""
        return self.member(version, SIMILAR.segment, item_id)

    def member(self, version: str, segment: str, member_id: int) -> str:
        return f"{self.root}:{version}:{segment}:{member_id}"

    def fallback(self, version: str) -> str:
        return f"{self.root}:{version}:fallback"

    def version_pattern(self, version: str, suffix: str = "*") -> str:
        """SCAN MATCH pattern for a version's data keys; glob characters are escaped."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", f"{self.root}:{version}:") + suffix


@dataclass(frozen=True)
class Lists:
    """Ranked lists ready to pack: rows sorted by owner and rank, `offsets` bounding each owner."""

    owners: np.ndarray
    offsets: np.ndarray
    items: pa.Array
    reasons: pa.Array
    refs: pa.Array


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


class RecItem(TypedDict):
    """One decoded item: `reason` is the rendered text, None when no catalogue was given."""

    item_id: int
    rank: int
    source: str
    reason_code: str
    reason_ref: int | None
    reason: str | None


class UserRecs(TypedDict):
    """A reader's answer: the decoded items, whether they were the user's own, the raw payload."""

    user_id: int
    personal: bool
    table_version: str
    generated_at: str
    items: list[RecItem]
    payload: dict[str, Any]


class SimilarItem(TypedDict):
    item_id: int
    rank: int
    score: float


class SimilarItems(TypedDict):
    """A decoded "more like this" list."""

    item_id: int
    table_version: str
    generated_at: str
    items: list[SimilarItem]


Catalogue = Mapping[int, Mapping[str, str]]
"""Item id -> its `title`, `publisher` and `category`: what reason templates are rendered with."""


# -- writing a version ---------------------------------------------------------------------------


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
    stamp = _utc_text(generated_at)
    if "reason_ref" not in fallback.columns:  # scoring's fallback (trending) needs no refs
        fallback = fallback.assign(reason_ref=np.nan)
    lists = _lists(_table(fallback, FALLBACK_COLUMNS, "fallback"), REASONS, "fallback")
    if len(lists.owners) == 0:
        raise PublishError("the fallback list is empty; users without a row would get nothing")
    fallback_payload = _pack(lists, stamp)[0]
    item_ids, similar_payloads = _similar_payloads(_prepared_similar(similar), stamp)
    meta = {
        "contract_version": CONTRACT_VERSION,
        "batch": batch,
        "created_at": _now(),
        "generated_at": stamp,
        "status": STAGING,
        "models": _json_safe(models),
        "shards": shards,
        "reasons": [{"code": r.code, "source": r.source, "template": r.template} for r in REASONS],
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
    _stage(
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
    meta = _read_meta(client, keys, version)
    if meta["status"] != STAGING:
        raise PublishError(f"version {version} is {meta['status']}; shards go into a staging one")
    if meta["shards"] != shards:
        raise PublishError(f"version {version} has {meta['shards']} shards, not {shards}")
    lists = _lists(_table(recs, USER_COLUMNS, "recs"), _reasons_of(meta), "recs")
    foreign = lists.owners[user_shard(lists.owners, shards) != shard]
    if len(foreign):
        raise PublishError(
            f"{len(foreign)} users of shard {shard_key(shard, shards)} belong to other shards "
            f"(first: {', '.join(map(str, foreign[:5].tolist()))})"
        )
    payloads = _pack(lists, meta["generated_at"])
    names = [keys.user(version, uid) for uid in lists.owners.tolist()]
    writing = time.perf_counter()
    _stage(client, names, payloads, batch_size, staging_ttl_seconds)
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
    meta = _read_meta(client, keys, version)
    records = _shard_records(client, keys, version, meta["shards"])
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
    _check_exist(client, version, USERS, user_keys)
    _check_exist(client, version, SIMILAR, similar_keys)
    picked = _sample(user_keys, sample, seed=version)
    picked_similar = _sample(similar_keys, sample, seed=f"{version}:similar")
    user_side = [*picked, keys.fallback(version)]
    raws = _pipelined(client, "get", [*user_side, *picked_similar])
    reasons = _reasons_of(meta)
    for key, raw in zip(user_side, raws[: len(user_side)], strict=True):
        _check_payload(key, raw, reasons)
    for key, raw in zip(picked_similar, raws[len(user_side) :], strict=True):
        _check_similar_payload(key, raw)
    if meta["status"] == STAGING:
        meta = _totalled(meta, records)
        _check_meta(meta, version)
        _write_meta(client, keys, {**meta, "status": VERIFIED})
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
    meta = _read_meta(client, keys, version)
    current = _current(client, keys)
    if current == version:
        log.info("%s is already live", version)
        return meta.get("previous_version")
    if meta["status"] != VERIFIED:
        raise PublishError(f"version {version} is {meta['status']}; verify_table must pass first")
    _persist_complete(client, keys, version, meta["counts"], ttl_seconds)
    live = {**meta, "status": LIVE, "activated_at": _now(), "previous_version": current}
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
    current = _current(client, keys)
    if current is None:
        raise PublishError(f"no live table under {keys.root}; nothing to roll back")
    target = to or _read_meta(client, keys, current).get("previous_version")
    if target is None:
        raise PublishError(f"{current} was the first version; there is nothing to roll back to")
    if target == current:
        raise PublishError(f"{target} is already live")
    meta = _read_meta(client, keys, target)
    if meta["status"] not in (RETIRED, ROLLED_BACK):
        raise PublishError(f"{target} is {meta['status']}, not a former live version")
    _persist_complete(client, keys, target, meta["counts"], ttl_seconds)
    restored = {**meta, "status": LIVE, "activated_at": _now()}
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
    current = _current(client, keys)
    if current != version:
        raise PublishConflict(f"{version} is not the live version ({current}); score again")
    meta = _read_meta(client, keys, version)
    stamp = _utc_text(generated_at)
    lists = _lists(_table(recs, USER_COLUMNS, "recs"), _reasons_of(meta), "recs")
    payloads = _pack(lists, stamp)
    item_ids, similar_payloads = _similar_payloads(_prepared_similar(similar), stamp)
    old = _replace(
        client, [keys.user(version, u) for u in lists.owners.tolist()], payloads, batch_size
    )
    old_similar = _replace(
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


def list_versions(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Known versions, newest first: version, created_at, status, users, live, expires_in (s)."""
    keys = Keys(prefix)
    current = _current(client, keys)
    members = [_text(m) for m in client.zrange(keys.versions, 0, -1, desc=True)]
    with client.pipeline(transaction=False) as pipe:
        for version in members:
            pipe.get(keys.meta(version))
            pipe.ttl(keys.meta(version))
        replies = pipe.execute()
    rows = []
    for version, raw, ttl in zip(members, replies[::2], replies[1::2], strict=True):
        meta = json.loads(raw) if raw is not None else {}
        rows.append(
            {
                "version": version,
                "created_at": meta.get("created_at"),
                "status": meta.get("status", EXPIRED),
                "users": meta.get("counts", {}).get("users"),
                "live": version == current,
                "expires_in": ttl if ttl >= 0 else None,
            }
        )
    return rows


def delete_version(client: redis.Redis, prefix: str, version: str) -> int:
    """Delete a version that is not live (e.g. a failed run's staged keys); return keys removed."""
    keys = Keys(prefix)
    if _current(client, keys) == version:
        raise PublishError(f"{version} is live; activate or roll back to another version first")
    found = [*_version_keys(client, keys, version), keys.meta(version), keys.shards(version)]
    removed = sum(_pipelined(client, "unlink", found))
    client.zrem(keys.versions, version)
    log.info("deleted %s (%d keys)", version, removed)
    return removed


def live_meta(client: redis.Redis, prefix: str) -> dict[str, Any] | None:
    """The meta record of the live version; None if nothing is live."""
    keys = Keys(prefix)
    version = _current(client, keys)
    return None if version is None else _read_meta(client, keys, version)


# -- reading (the reference reader) --------------------------------------------------------------


def read_user_recs(
    client: redis.Redis, prefix: str, user_id: int, catalogue: Catalogue | None = None
) -> UserRecs:
    """What a product app does: read the pointer, the user's key (else the fallback), the meta.

    Items are decoded; with a `catalogue` their reason texts are rendered too. Apps cache the
    meta record per version: within a version its reason list only grows.
    """
    keys = Keys(prefix)
    version = _live_version(client, keys)
    raw = client.get(keys.user(version, user_id))
    personal = raw is not None
    if raw is None:
        raw = client.get(keys.fallback(version))
    if raw is None:
        raise UnknownUser(f"user {user_id} has no row and table {version} has no fallback")
    payload = json.loads(raw)
    reasons = _reasons_of(_read_meta(client, keys, version))
    return {
        "user_id": user_id,
        "personal": personal,
        "table_version": version,
        "generated_at": payload["at"],
        "items": decode_items(payload, reasons, catalogue),
        "payload": payload,
    }


def read_similar_items(client: redis.Redis, prefix: str, item_id: int) -> SimilarItems | None:
    """What a product app does for "more like this": read the pointer, then the item's key.

    None when the live table has no list for the item (e.g. it has no embedding yet).
    """
    keys = Keys(prefix)
    version = _live_version(client, keys)
    raw = client.get(keys.similar(version, item_id))
    if raw is None:
        return None
    payload = json.loads(raw)
    items: list[SimilarItem] = [
        {"item_id": item, "rank": rank, "score": score}
        for rank, (item, score) in enumerate(
            zip(payload["items"], payload["scores"], strict=True), 1
        )
    ]
    return {
        "item_id": item_id,
        "table_version": version,
        "generated_at": payload["at"],
        "items": items,
    }


def decode_items(
    payload: dict[str, Any], reasons: Sequence[Reason], catalogue: Catalogue | None = None
) -> list[RecItem]:
    """A packed user or fallback payload as one record per item, rank = position."""
    decoded: list[RecItem] = []
    for rank, (item, index, ref) in enumerate(
        zip(payload["items"], payload["reasons"], payload["refs"], strict=True), 1
    ):
        reason = reasons[index]
        text = None if catalogue is None else render_reason(reason.template, ref, item, catalogue)
        decoded.append(
            {
                "item_id": item,
                "rank": rank,
                "source": reason.source,
                "reason_code": reason.code,
                "reason_ref": ref,
                "reason": text,
            }
        )
    return decoded


def render_reason(template: str, ref: int | None, item_id: int, catalogue: Catalogue) -> str:
    """A reason's text: `{ref}` the ref itself, `{ref_title}` the title of item `ref`,
    `{publisher}` and `{category}` (in title case) those of the recommended item."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ("ref", "ref_title") and ref is None:
            raise PublishError(f"{template!r} needs a reason ref; item {item_id} has none")
        if name == "ref":
            return str(ref)
        if name == "ref_title":
            return _catalogued(catalogue, int(ref or 0))["title"]
        if name == "publisher":
            return _catalogued(catalogue, item_id)["publisher"]
        if name == "category":
            return _catalogued(catalogue, item_id)["category"].title()
        raise PublishError(f"unknown placeholder {{{name}}} in {template!r}")

    return _PLACEHOLDER.sub(value, template)


def catalogue_of(items: pd.DataFrame) -> dict[int, dict[str, str]]:
    """The lake's `items` table (item_id, title, publisher, category) as a `Catalogue`."""
    frame = items.drop_duplicates("item_id", keep="last").set_index("item_id")
    records = frame[["title", "publisher", "category"]].to_dict("index")
    return {int(item): dict(record) for item, record in records.items()}


# -- entry points bound to the settings: what the DAGs' tasks and the `inbo` CLI call -----------


def begin_batch(interval_end: datetime, shards: int, settings: Settings | None = None) -> str:
    """Reserve a version for the batch's `shards` user shards, stage its fallback and similar
    items (`recs_fallback`, `features/more_like_this` when the batch has one); return it.

    `models` in the meta record comes from the batch's score plan (`_reports/score/<batch>.json`);
    `generated_at` is the time of staging, the data interval is the meta record's `batch`.
    """
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    lake = Lake(settings.lake)
    fallback = lake.read("recs_fallback", {"batch": batch}, "part")
    similar = _batch_similar(lake, batch)
    with redis_connection(settings) as client:
        return begin_table(
            client,
            settings.redis_prefix,
            fallback,
            batch=batch,
            shards=shards,
            models=_models_used(lake, batch, shards, fallback, similar),
            batch_size=settings.publish_batch_size,
            generated_at=datetime.now(UTC),
            similar=similar,
        )


def publish_shard(
    interval_end: datetime,
    version: str,
    shard: int,
    shards: int,
    settings: Settings | None = None,
) -> ShardReport:
    """Stage the users of `recs/batch=K/shard=<key>/part.parquet` into `version`."""
    settings = settings or get_settings()
    recs = _read_shard(Lake(settings.lake), batch_key(interval_end), shard, shards)
    with redis_connection(settings) as client:
        report = stage_shard(
            client,
            settings.redis_prefix,
            version,
            recs,
            shard=shard,
            shards=shards,
            batch_size=settings.publish_batch_size,
        )
    return report


def publish_writer(
    interval_end: datetime,
    version: str,
    writer: int,
    writers: int,
    shards: int,
    settings: Settings | None = None,
) -> list[ShardReport]:
    """Stage, one after another, the shards `writer_shards` gives this writer."""
    settings = settings or get_settings()
    mine = writer_shards(writer, writers, shards)
    return [publish_shard(interval_end, version, shard, shards, settings) for shard in mine]


def verify_batch(interval_end: datetime, version: str, settings: Settings | None = None) -> str:
    """Verify `version` holds every user of every shard file and every similar-items list of
    the batch (none when it has no more_like_this table); return it."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    lake = Lake(settings.lake)
    similar = _batch_similar(lake, batch)
    items = [] if similar is None else similar["item_id"].unique().tolist()
    with redis_connection(settings) as client:
        shards = _read_meta(client, Keys(settings.redis_prefix), version)["shards"]
        users = {
            s: _read_shard(lake, batch, s, shards, ["user_id"])["user_id"].to_numpy()
            for s in range(shards)
        }
        verify_table(
            client, settings.redis_prefix, version, expected_users=users, expected_similar=items
        )
    return version


def activate_version(version: str, settings: Settings | None = None) -> str | None:
    """Make `version` live under the publish lock; return the version it replaced."""
    settings = settings or get_settings()
    with platform_lock(settings, PUBLISH), redis_connection(settings) as client:
        previous = activate(client, settings.redis_prefix, version, settings.version_ttl_seconds)
    snapshot(settings)
    return previous


def publish_batch(interval_end: datetime, settings: Settings | None = None) -> str:
    """`begin_batch` and one writer for every shard file of the batch, in this process."""
    settings = settings or get_settings()
    shards = _batch_shards(Lake(settings.lake), batch_key(interval_end))
    version = begin_batch(interval_end, shards, settings)
    publish_writer(interval_end, version, 0, 1, shards, settings)
    return version


def rollback_table(to: str | None = None, settings: Settings | None = None) -> tuple[str, str]:
    """`rollback` under the publish lock; returns (from_version, to_version)."""
    settings = settings or get_settings()
    with platform_lock(settings, PUBLISH), redis_connection(settings) as client:
        return rollback(client, settings.redis_prefix, to, ttl_seconds=settings.version_ttl_seconds)


def table_versions(settings: Settings | None = None) -> list[dict[str, Any]]:
    """`list_versions` with the platform's settings."""
    settings = settings or get_settings()
    with redis_connection(settings) as client:
        return list_versions(client, settings.redis_prefix)


def read_recs(
    user_id: int, settings: Settings | None = None, catalogue: Catalogue | None = None
) -> UserRecs:
    """`read_user_recs` with the platform's settings."""
    settings = settings or get_settings()
    with redis_connection(settings) as client:
        return read_user_recs(client, settings.redis_prefix, user_id, catalogue)


def read_similar(item_id: int, settings: Settings | None = None) -> SimilarItems | None:
    """`read_similar_items` with the platform's settings."""
    settings = settings or get_settings()
    with redis_connection(settings) as client:
        return read_similar_items(client, settings.redis_prefix, item_id)


def sample_users(count: int, settings: Settings | None = None) -> list[int]:
    """Up to `count` users with a personal row in the live table, in id order (for demos)."""
    settings = settings or get_settings()
    keys = Keys(settings.redis_prefix)
    with redis_connection(settings) as client:
        version = _live_version(client, keys)
        found: set[int] = set()
        for name in client.scan_iter(match=keys.version_pattern(version, "u:*"), count=SCAN_COUNT):
            found.add(_id_of(_text(name)))
            if len(found) >= count:
                break
    return sorted(found)


def redis_cli_example(url: str, prefix: str | None = None, user_id: int = 1) -> str:
    """A copy-paste redis-cli command reading a user's row the way apps do (password masked)."""
    keys = Keys(prefix or get_settings().redis_prefix)
    cli = f"{redis_binary('redis-cli')} -u {masked_url(url)}"
    return f'{cli} GET "{keys.root}:$({cli} GET "{keys.current}"):u:{user_id}"'


@lru_cache(maxsize=4)
def schema_validator(path: str = str(USER_RECS_SCHEMA)) -> Validator:
    """A compiled validator for one of the contract's JSON schemas (docs/schemas)."""
    import jsonschema

    schema = json.loads(Path(path).read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


# -- input checks and packing --------------------------------------------------------------------


def _table(frame: pd.DataFrame | pa.Table, columns: Sequence[str], name: str) -> pa.Table:
    """`frame` as Arrow `columns`, ids as int64, after the checks JSON cannot make."""
    names = frame.column_names if isinstance(frame, pa.Table) else list(frame.columns)
    missing = [c for c in columns if c not in names]
    if missing:
        raise PublishError(f"{name} lacks columns {missing}")
    table = frame.select(columns) if isinstance(frame, pa.Table) else _arrow(frame[list(columns)])
    return _checked(table, name)


def _arrow(frame: pd.DataFrame) -> pa.Table:
    """A pandas frame as Arrow; NaN in a float column becomes null (a nullable id read by pandas)."""
    return pa.Table.from_pandas(frame, preserve_index=False)


def _checked(table: pa.Table, name: str) -> pa.Table:
    """Integer ids cast to int64, no nulls outside `reason_ref`, finite scores."""
    for column in table.column_names:
        kind = table.schema.field(column).type
        integer = pa.types.is_integer(kind) or (
            # pandas holds nullable ids as NaN floats, or as None when all are null
            column == "reason_ref" and (pa.types.is_floating(kind) or pa.types.is_null(kind))
        )
        if column in ID_COLUMNS and not integer:
            raise PublishError(f"{name} column {column} must have an integer dtype")
        if column in ID_COLUMNS and kind != pa.int64():
            try:
                table = table.set_column(
                    table.column_names.index(column), column, pc.cast(table[column], pa.int64())
                )
            except pa.ArrowInvalid:
                raise PublishError(f"{name} column {column} holds non-integer values") from None
    nulls = [c for c in table.column_names if c != "reason_ref" and table[c].null_count]
    if nulls:
        raise PublishError(f"{name} has nulls in {nulls}")
    if "score" in table.column_names:
        scores = table["score"].to_numpy()
        if not np.isfinite(scores.astype(float)).all():
            raise PublishError(f"{name} has scores that are not finite numbers")
    return table


def _lists(table: pa.Table, reasons: Sequence[Reason], name: str) -> Lists:
    """Rows grouped into ranked lists (one per user, or one for a fallback without user_id)."""
    if "user_id" in table.column_names:
        table = _sorted(table, ["user_id", "rank"])
        owners_all = table["user_id"].to_numpy()
    else:
        table = _sorted(table, ["rank"])
        owners_all = np.zeros(len(table), dtype=np.int64)
    starts = np.flatnonzero(np.r_[len(table) > 0, owners_all[1:] != owners_all[:-1]])
    offsets = np.r_[starts, len(table)].astype(np.int64)
    position = np.arange(len(table)) - np.repeat(offsets[:-1], np.diff(offsets)) + 1
    if not (table["rank"].to_numpy() == position).all():
        raise PublishError(f"{name} ranks are not 1..n per user")
    if _repeats(owners_all, table["item_id"].to_numpy()):
        raise PublishError(f"{name} lists an item twice for one user")
    return Lists(
        owners_all[offsets[:-1]],
        offsets,
        table["item_id"].combine_chunks(),
        _reason_indexes(table, reasons, name),
        table["reason_ref"].combine_chunks(),
    )


def _sorted(table: pa.Table, by: list[str]) -> pa.Table:
    """`table` sorted by `by` (one or two keys); skipped when it already is (scoring writes
    shard files sorted)."""
    if len(table) < 2:
        return table
    first = table[by[0]].to_numpy()
    ahead, tie = first[1:] > first[:-1], first[1:] == first[:-1]
    if len(by) > 1:
        second = table[by[1]].to_numpy()
        tie &= second[1:] >= second[:-1]
    if (ahead | tie).all():
        return table
    return table.sort_by([(c, "ascending") for c in by])


def _repeats(owners: np.ndarray, members: np.ndarray) -> bool:
    """Whether some owner lists a member twice; one hash over both ids when they fit 32 bits."""
    if len(owners) == 0:
        return False
    if owners.min() >= 0 and members.min() >= 0 and owners.max() < 2**31 and members.max() < 2**32:
        return bool(pd.Index((owners << 32) | members).has_duplicates)
    return bool(pd.DataFrame({"owner": owners, "member": members}).duplicated().any())


def _reason_indexes(table: pa.Table, reasons: Sequence[Reason], name: str) -> pa.Array:
    """Each row's index into `reasons`, after checking its code is known, its source is the
    code's and it has the ref the code's template needs.

    Works on the few distinct (code, source) pairs: dictionary indexes, not strings, per row.
    """
    codes, code_of = _dictionary(table["reason_code"])
    sources, source_of = _dictionary(table["source"])
    position = {r.code: i for i, r in enumerate(reasons)}
    unknown = sorted(set(code_of) - set(position))
    if unknown:
        raise PublishError(f"{name} has reason codes without a template: {unknown}")
    lookup = np.array([position[code] for code in code_of], dtype=np.int64)
    index = lookup[codes] if len(code_of) else codes.astype(np.int64)
    pairs = np.unique(codes * max(len(source_of), 1) + sources)
    for pair in pairs.tolist():
        code, source = code_of[pair // len(source_of)], source_of[pair % len(source_of)]
        if source != reasons[position[code]].source:
            raise PublishError(
                f"{name}: source {source} does not match reason code {code} "
                f"(its source is {reasons[position[code]].source})"
            )
    needs = np.array([r.needs_ref for r in reasons])[index]
    lacking = needs & table["reason_ref"].is_null().to_numpy(zero_copy_only=False)
    if lacking.any():
        first = reasons[index[np.flatnonzero(lacking)[0]]].code
        raise PublishError(
            f"{name}: {int(lacking.sum())} rows lack the reason_ref their template needs "
            f"(first: code {first})"
        )
    return pa.array(index)


def _dictionary(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """A string column as per-row indexes into its distinct values (read as such from Parquet)."""
    encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    array = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.dictionary.type != pa.string():
        array = array.cast(pa.dictionary(array.type.index_type, pa.string()))
    return array.indices.to_numpy().astype(np.int64), array.dictionary.to_pylist()


def _pack(lists: Lists, stamp: str) -> list[str]:
    """One JSON payload per list: `{"items":[..],"reasons":[..],"refs":[..],"at":".."}`.

    Built column-wise by Arrow (numbers to text, joined per list), ~1M items per 0.05 s.
    """
    if len(lists.owners) == 0:
        return []
    offsets = pa.array(lists.offsets, pa.int32())

    def joined(values: pa.Array) -> pa.Array:
        text = pc.fill_null(pc.cast(values, pa.string()), "null")
        return pc.binary_join(pa.ListArray.from_arrays(offsets, text), ",")

    payloads = pc.binary_join_element_wise(
        '{"items":[',
        joined(lists.items),
        '],"reasons":[',
        joined(lists.reasons),
        '],"refs":[',
        joined(lists.refs),
        f'],"at":"{stamp}"}}',
        "",
    )
    return payloads.to_pylist()


def _prepared_similar(frame: pd.DataFrame | None) -> pd.DataFrame:
    """Similar items with a `rank` per item (best score first, ties by id), sorted by item."""
    if frame is None:
        frame = pd.DataFrame({name: pd.Series(dtype="int64") for name in SIMILAR_COLUMNS})
    missing = [c for c in SIMILAR_COLUMNS if c not in frame.columns]
    if missing:
        raise PublishError(f"similar lacks columns {missing}")
    frame = _checked(_arrow(frame[list(SIMILAR_COLUMNS)]), "similar").to_pandas()
    if (frame["item_id"] == frame["similar_item_id"]).any():
        raise PublishError("similar lists an item as similar to itself")
    if frame.duplicated(["item_id", "similar_item_id"]).any():
        raise PublishError("similar lists an item twice for one item")
    return frame.sort_values(
        ["item_id", "score", "similar_item_id"],
        ascending=[True, False, True],
        kind="stable",
        ignore_index=True,
    )


def _similar_payloads(similar: pd.DataFrame, stamp: str) -> tuple[list[int], list[str]]:
    """Item ids and their `{"items":[..],"scores":[..],"at":".."}` payloads (6 significant
    digits), from similar items sorted by item and rank."""
    payloads: list[str] = []
    ids: list[int] = []
    for item_id, rows in similar.groupby("item_id", sort=True):
        items = ",".join(map(str, rows["similar_item_id"].tolist()))
        scores = ",".join(f"{score:.6g}" for score in rows["score"].tolist())
        ids.append(int(item_id))
        payloads.append(f'{{"items":[{items}],"scores":[{scores}],"at":"{stamp}"}}')
    return ids, payloads


# -- Redis helpers -------------------------------------------------------------------------------


def _reserve_version(client: redis.Redis, keys: Keys, meta: dict[str, Any], ttl: int) -> str:
    """A new version id `<batch>-<6 hex>`, claimed by creating its meta key with SET NX."""
    for _ in range(5):
        version = f"{meta['batch']}-{secrets.token_hex(3)}"
        record = {"version": version, **meta}
        if client.set(keys.meta(version), json.dumps(record), ex=ttl, nx=True):
            client.zadd(keys.versions, {version: time.time()})
            return version
    raise PublishError(f"could not find an unused version id for batch {meta['batch']}")


def _stage(
    client: redis.Redis, names: list[str], values: list[str], batch_size: int, ttl: int
) -> None:
    """SET every key with the staging TTL.

    One Lua call per `batch_size` keys on a single server; pipelined `SET EX` (`PIPELINE_BATCH` a
    round trip) on a cluster, where a script's keys would have to share a slot. Either way each
    key is written by one atomic SET.
    """
    cluster = isinstance(client, RedisCluster)
    size = PIPELINE_BATCH if cluster else batch_size
    chunks = zip(_chunks(names, size), _chunks(values, size), strict=True)
    if cluster:
        for name_chunk, value_chunk in chunks:
            with client.pipeline(transaction=False) as pipe:
                for name, value in zip(name_chunk, value_chunk, strict=True):
                    pipe.set(name, value, ex=ttl)
                pipe.execute()
        return
    script = client.register_script(_STAGE_SCRIPT)
    for name_chunk, value_chunk in chunks:
        script(keys=list(name_chunk), args=[ttl, *value_chunk])


def _replace(
    client: redis.Redis, names: list[str], values: list[str], batch_size: int
) -> list[str | bytes | None]:
    """SET each key for good (no TTL), pipelined; the values they replaced (None: a new key)."""
    replaced: list[Any] = []
    for name_chunk, value_chunk in zip(
        _chunks(names, batch_size), _chunks(values, batch_size), strict=True
    ):
        with client.pipeline(transaction=False) as pipe:
            for name, value in zip(name_chunk, value_chunk, strict=True):
                pipe.set(name, value, get=True)
            replaced.extend(pipe.execute())
    return replaced


def _update_live_meta(
    client: redis.Redis, keys: Keys, version: str, change: dict[str, int], through: str
) -> None:
    """Add `change` to the live version's counts and bytes and record the refresh, atomically.

    WATCH on the pointer and the meta (one slot) makes a concurrent switch a `PublishConflict`.
    """
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(keys.current, keys.meta(version))
            if _current(pipe, keys) != version:
                raise PublishConflict(f"{version} stopped being live during the refresh")
            meta = _read_meta(pipe, keys, version)
            counts = {**meta["counts"]}
            for name in ("users", "items", "similar_items"):
                counts[name] += change[name]
            meta = {
                **meta,
                "counts": counts,
                "bytes": meta["bytes"] + change["bytes"],
                "refreshed_through": through,
                "refreshed_at": _now(),
                "refreshes": meta.get("refreshes", 0) + 1,
            }
            pipe.multi()
            pipe.set(keys.meta(version), json.dumps(meta))
            pipe.execute()
        except WatchError:
            raise PublishConflict(f"the live table changed while refreshing {version}") from None


def _read_meta(client: redis.Redis, keys: Keys, version: str) -> dict[str, Any]:
    raw = client.get(keys.meta(version))
    if raw is None:
        raise PublishError(
            f"version {version} does not exist or has expired (no {keys.meta(version)})"
        )
    meta: dict[str, Any] = json.loads(raw)
    return meta


def _write_meta(client: redis.Redis, keys: Keys, meta: dict[str, Any]) -> None:
    client.set(keys.meta(meta["version"]), json.dumps(meta), keepttl=True)


def _reasons_of(meta: dict[str, Any]) -> list[Reason]:
    return [Reason(r["code"], r["source"], r["template"]) for r in meta["reasons"]]


def _shard_records(
    client: redis.Redis, keys: Keys, version: str, shards: int
) -> dict[int, dict[str, int]]:
    """The registry's record of every shard; PublishError naming the shards not staged yet."""
    raw = client.hgetall(keys.shards(version))
    records = {int(_text(k)): json.loads(v) for k, v in raw.items()}
    missing = [s for s in range(shards) if s not in records]
    if missing:
        raise PublishError(
            f"version {version} is incomplete: {len(missing)} of {shards} shards were not staged "
            f"(first: {', '.join(map(str, missing[:5]))})"
        )
    return records


def _totalled(meta: dict[str, Any], records: dict[int, dict[str, int]]) -> dict[str, Any]:
    """`meta` with the shards' users, items and bytes added to what `begin_table` counted."""
    counts = {
        **meta["counts"],
        "users": sum(r["users"] for r in records.values()),
        "items": sum(r["items"] for r in records.values()),
    }
    return {
        **meta,
        "counts": counts,
        "bytes": meta["bytes"] + sum(r["bytes"] for r in records.values()),
    }


def _check_meta(meta: dict[str, Any], version: str) -> None:
    error = next(schema_validator(str(META_SCHEMA)).iter_errors(meta), None)
    if error is not None or meta.get("version") != version:
        detail = error.message if error else f"its version field is {meta.get('version')}"
        raise PublishError(f"meta record of {version} is malformed: {detail}")


def _check_exist(client: redis.Redis, version: str, kind: KeyKind, names: list[str]) -> None:
    """Every key exists: one multi-key EXISTS per batch (split by slot on a cluster), and the
    per-key EXISTS only of a batch that came up short, to name what is missing."""
    missing: list[int] = []
    for chunk in _chunks(names, SCAN_COUNT):
        if client.exists(*chunk) < len(chunk):
            flags = _pipelined(client, "exists", list(chunk))
            missing += [_id_of(key) for key, flag in zip(chunk, flags, strict=True) if not flag]
    if missing:
        raise PublishError(
            f"version {version} is incomplete: {len(missing)} of {len(names)} {kind.missing} "
            f"(first: {', '.join(map(str, missing[:5]))})"
        )


def _check_payload(key: str, raw: str | bytes | None, reasons: Sequence[Reason]) -> None:
    """Schema, equal column lengths, no item twice, known reasons with the refs they need."""
    payload = _parsed(key, raw, USER_RECS_SCHEMA)
    items, indexes, refs = payload["items"], payload["reasons"], payload["refs"]
    if not len(items) == len(indexes) == len(refs):
        raise PublishError(f"{key} has items, reasons and refs of different lengths")
    if len(set(items)) != len(items):
        raise PublishError(f"{key} lists an item twice")
    if max(indexes) >= len(reasons):
        raise PublishError(f"{key} names reason {max(indexes)}; the version has {len(reasons)}")
    if any(reasons[i].needs_ref and ref is None for i, ref in zip(indexes, refs, strict=True)):
        raise PublishError(f"{key} lacks a ref its reason's template needs")


def _check_similar_payload(key: str, raw: str | bytes | None) -> None:
    """Schema, equal lengths, no item twice and never the item itself."""
    payload = _parsed(key, raw, SIMILAR_SCHEMA)
    items = payload["items"]
    if len(items) != len(payload["scores"]):
        raise PublishError(f"{key} has items and scores of different lengths")
    if len(set(items)) != len(items):
        raise PublishError(f"{key} lists an item twice")
    if _id_of(key) in items:
        raise PublishError(f"{key} lists the item as similar to itself")


def _parsed(key: str, raw: str | bytes | None, schema: Path) -> dict[str, Any]:
    """A stored payload as JSON, valid against `schema`."""
    if raw is None:
        raise PublishError(f"{key} is missing")
    try:
        payload: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise PublishError(f"{key} is not valid JSON: {exc}") from None
    error = next(schema_validator(str(schema)).iter_errors(payload), None)
    if error is not None:
        path = "/".join(map(str, error.absolute_path))
        raise PublishError(f"{key} breaks the contract at /{path}: {error.message}")
    return payload


def _persist_complete(
    client: redis.Redis, keys: Keys, version: str, counts: dict[str, int], ttl_seconds: int
) -> None:
    """Remove the TTL of every key of `version`, then check they are all still there.

    Counting after PERSIST is what makes the check final: nothing can expire afterwards. If keys
    are missing, they all get `ttl_seconds` back so the survivors still clean themselves up.
    """
    found = [*_version_keys(client, keys, version), keys.meta(version), keys.shards(version)]
    _pipelined(client, "persist", found)
    present = sum(_pipelined(client, "exists", found[:-2]))
    has_fallback = bool(client.exists(keys.fallback(version)))
    expected = counts["users"] + counts["similar_items"] + 1
    if present != expected or not has_fallback:
        _pipelined(client, "expire", found, ttl_seconds)
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
            if _current(pipe, keys) != expected_current:
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
        meta = {**json.loads(raw), "status": status, "retired_at": _now()}
        client.set(keys.meta(version), json.dumps(meta))
    found = [*_version_keys(client, keys, version), keys.meta(version), keys.shards(version)]
    _pipelined(client, "expire", found, ttl_seconds)
    log.info("%s is %s; its %d keys expire in %d s", version, status, len(found), ttl_seconds)


def _forget_expired(client: redis.Redis, keys: Keys) -> None:
    """Drop versions whose meta has expired from the versions set."""
    members = [_text(m) for m in client.zrange(keys.versions, 0, -1)]
    flags = _pipelined(client, "exists", [keys.meta(m) for m in members])
    gone = [m for m, flag in zip(members, flags, strict=True) if not flag]
    if gone:
        client.zrem(keys.versions, *gone)


def _version_keys(client: redis.Redis, keys: Keys, version: str) -> list[str]:
    """The data keys of a version (users, fallback, similar items), by SCAN on every node."""
    return sorted(_scan(client, keys.version_pattern(version)))


def _scan(client: redis.Redis, pattern: str) -> set[str]:
    """Key names matching `pattern`; a set because SCAN may return a key more than once."""
    return {_text(name) for name in client.scan_iter(match=pattern, count=SCAN_COUNT)}


def _pipelined(
    client: redis.Redis,
    command: str,
    names: list[str],
    *args: Any,
    batch_size: int = PIPELINE_BATCH,
) -> list[Any]:
    """Run `command name *args` for every name, pipelined in batches; replies in order."""
    replies: list[Any] = []
    for chunk in _chunks(names, batch_size):
        with client.pipeline(transaction=False) as pipe:
            for name in chunk:
                getattr(pipe, command)(name, *args)
            replies.extend(pipe.execute())
    return replies


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sample(items: list[str], size: int, *, seed: str) -> list[str]:
    """A reproducible sample: the same version always checks the same users."""
    return items if len(items) <= size else random.Random(seed).sample(items, size)


def _id_of(key: str) -> int:
    """The user or item id at the end of a key."""
    return int(key.rsplit(":", 1)[1])


def _catalogued(catalogue: Catalogue, item_id: int) -> Mapping[str, str]:
    try:
        return catalogue[item_id]
    except KeyError:
        raise DataNotFound(
            f"item {item_id} is not in the catalogue; cannot render its reason"
        ) from None


# -- lake helpers --------------------------------------------------------------------------------


def _read_shard(
    lake: Lake, batch: str, shard: int, shards: int, columns: Sequence[str] = USER_COLUMNS
) -> pa.Table:
    """`columns` of one shard file of the batch's recs (others are not read)."""
    path = lake.path(RECS_TABLE, {"batch": batch, "shard": shard_key(shard, shards)}, "part")
    if not lake.fs.exists(path):
        raise DataNotFound(f"{path} does not exist; score shard {shard} of {shards} first")
    with lake.fs.open(path, "rb") as handle:
        present = pq.read_schema(handle).names
        handle.seek(0)
        wanted = [c for c in columns if c in present]
        return pq.read_table(handle, columns=wanted, read_dictionary=["source", "reason_code"])


def _batch_shards(lake: Lake, batch: str) -> int:
    """The shard count of the batch's recs files, once all of them are there."""
    found = [
        _SHARD_DIR.search(path) for path in lake.files(RECS_TABLE, f"batch={batch}/*/part.parquet")
    ]
    keys = {(int(m.group(1)), int(m.group(2))) for m in found if m}
    counts = {shards for _, shards in keys}
    if len(counts) != 1:
        raise DataNotFound(
            f"batch {batch} has no single set of {RECS_TABLE} shard files: {sorted(keys)}"
        )
    shards = counts.pop()
    if len(keys) != shards:
        raise DataNotFound(
            f"batch {batch} has {len(keys)} of its {shards} {RECS_TABLE} shard files"
        )
    return shards


def _batch_similar(lake: Lake, batch: str) -> pd.DataFrame | None:
    """The batch's more_like_this table, or None when the batch has none (no embeddings)."""
    if not lake.exists(SIMILAR_TABLE, {"batch": batch}, "part"):
        log.info("batch %s has no %s table; publishing no similar items", batch, SIMILAR_TABLE)
        return None
    return lake.read(SIMILAR_TABLE, {"batch": batch}, "part")


def _models_used(
    lake: Lake, batch: str, shards: int, fallback: pd.DataFrame, similar: pd.DataFrame | None
) -> dict[str, Any]:
    """The models behind the table: the score plan's, else the sources found in the tables."""
    try:
        report = json.loads(lake.read_json(SCORE_REPORTS, batch))
    except DataNotFound:
        report = {}
    except ValueError as exc:
        raise PublishError(f"{SCORE_REPORTS}/{batch}.json is not valid JSON: {exc}") from None
    models = report.get("models") if isinstance(report, dict) else None
    if models is not None and not isinstance(models, dict):
        raise PublishError(
            f"{SCORE_REPORTS}/{batch}.json: models must be an object, not {models!r}"
        )
    if models:
        return models
    log.warning(
        "%s/%s.json is missing or names no models; the meta record names the table's sources "
        "instead (re-run scoring for the batch to record the model versions)",
        SCORE_REPORTS,
        batch,
    )
    sources = set(fallback["source"].unique().tolist())
    for shard in range(shards):
        sources |= set(
            pc.unique(_read_shard(lake, batch, shard, shards, ["source"])["source"]).to_pylist()
        )
    if similar is not None and not similar.empty:
        sources.add("content")
    return {source: f"models of batch {batch}" for source in sorted(sources)}


def _json_safe(models: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(models, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PublishError(f"models must be plain JSON (names to versions): {exc}") from None
    return models


def _utc_text(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise PublishError(f"{moment} has no time zone; pass an aware UTC datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return _utc_text(datetime.now(UTC))


def _live_version(client: redis.Redis, keys: Keys) -> str:
    version = _current(client, keys)
    if version is None:
        raise DataNotFound(f"no live recommendations table under {keys.root}")
    return version


def _current(client: redis.Redis, keys: Keys) -> str | None:
    """The live version id, or None before the first activation."""
    value = client.get(keys.current)
    return None if value is None else _text(value)


def _text(value: object) -> str:
    """A reply as `str`, whichever `decode_responses` the client was made with."""
    return value.decode() if isinstance(value, bytes) else str(value)
