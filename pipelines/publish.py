"""Publishing recommendation tables to Redis under the versioned contract v1 (docs/redis-contract.md).

A run writes a whole new table version next to the live one, checks it, then moves one pointer:
`stage_table` -> `verify_table` -> `activate`. Readers follow the pointer, so they see the old
table or the new one, never a mix, and the old one stays readable (with a TTL) for `rollback`.

Staged keys carry a TTL from the moment they are written and are made permanent only by
`activate`, so a run that dies between stage and activate cleans up after itself.

Every function takes a redis-py client made with either `decode_responses` setting.
"""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import numpy as np
import pandas as pd
from pandas.api.types import is_integer_dtype
from redis.exceptions import WatchError

from inbo.errors import DataNotFound, PublishError, UnknownUser
from inbo.lake import Lake, batch_key
from inbo.schemas import RECOMMENDATIONS
from inbo.services import masked_url, redis_binary, redis_connection
from inbo.settings import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    import redis
    from jsonschema.protocols import Validator

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTRACT_VERSION = 1
STAGING_TTL_SECONDS = 24 * 3600
SCAN_COUNT = 2000
SCHEMA_DIR = REPO_ROOT / "docs" / "schemas"
USER_RECS_SCHEMA = SCHEMA_DIR / "user-recs.v1.schema.json"
META_SCHEMA = SCHEMA_DIR / "recs-meta.v1.schema.json"

STAGING, STAGED, VERIFIED, LIVE, RETIRED, ROLLED_BACK = (
    "staging",
    "staged",
    "verified",
    "live",
    "retired",
    "rolled_back",
)
EXPIRED = "expired"
"""Reported by `list_versions` for a version whose keys are gone; never stored."""

USER_COLUMNS: tuple[str, ...] = tuple(RECOMMENDATIONS.names)
FALLBACK_COLUMNS: tuple[str, ...] = tuple(n for n in USER_COLUMNS if n != "user_id")
REASON_COLUMNS = ["source", "reason_code", "reason"]
INTEGER_COLUMNS = ("user_id", "rank", "item_id")
_BATCH = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Keys:
    """Key names of contract v1 under one prefix; the only place they are spelled out."""

    prefix: str

    @property
    def root(self) -> str:
        return f"{self.prefix}:recs:v{CONTRACT_VERSION}"

    @property
    def current(self) -> str:
        return f"{self.root}:current"

    @property
    def versions(self) -> str:
        return f"{self.root}:versions"

    def user(self, version: str, user_id: int) -> str:
        return f"{self.root}:{version}:u:{user_id}"

    def fallback(self, version: str) -> str:
        return f"{self.root}:{version}:fallback"

    def meta(self, version: str) -> str:
        return f"{self.root}:{version}:meta"

    def version_pattern(self, version: str, suffix: str = "*") -> str:
        """SCAN MATCH pattern for a version's keys; glob characters in the prefix are escaped."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", f"{self.root}:{version}:") + suffix


@dataclass(frozen=True)
class StageReport:
    """What `stage_table` wrote: the new version id and its size."""

    version: str
    users: int
    items: int
    fallback_items: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_table` checked."""

    version: str
    users_checked: int
    sampled: int
    seconds: float


class UserRecs(TypedDict):
    """A reader's answer: the payload, and whether it was the user's own row or the fallback."""

    user_id: int
    personal: bool
    table_version: str
    payload: dict[str, Any]


def stage_table(
    client: redis.Redis,
    prefix: str,
    recs: pd.DataFrame,
    fallback: pd.DataFrame,
    *,
    batch: str,
    models: dict[str, Any],
    batch_size: int,
    generated_at: datetime,
    staging_ttl_seconds: int = STAGING_TTL_SECONDS,
) -> StageReport:
    """Write every user key, the fallback and the meta record of a new version, not yet live.

    Keys are written with pipelined `SET ... EX` in batches of `batch_size` (measured faster than
    MSET followed by EXPIRE, which the staging TTL would need); the TTL is removed by `activate`.
    """
    started = time.perf_counter()
    if not _BATCH.fullmatch(batch):
        raise PublishError(f"batch {batch!r} may only contain letters, digits, '_', '.', '-'")
    keys = Keys(prefix)
    recs = _prepared(recs, USER_COLUMNS, "recs")
    fallback = _prepared(fallback, FALLBACK_COLUMNS, "fallback")
    if fallback.empty:
        raise PublishError("the fallback list is empty; users without a row would get nothing")
    stamp = _utc_text(generated_at)
    meta = {
        "contract_version": CONTRACT_VERSION,
        "batch": batch,
        "created_at": _utc_text(datetime.now(UTC)),
        "generated_at": stamp,
        "status": STAGING,
        "models": _json_safe(models),
    }
    version = _reserve_version(client, keys, meta, staging_ttl_seconds)
    meta = {"version": version, **meta}
    user_ids, payloads = _user_payloads(recs, version, stamp)
    fallback_payload = _payload(None, version, stamp, _item_fragments(fallback))
    _set_batches(
        client,
        [keys.user(version, uid) for uid in user_ids] + [keys.fallback(version)],
        [*payloads, fallback_payload],
        batch_size,
        staging_ttl_seconds,
    )
    size = sum(map(len, payloads)) + len(fallback_payload)
    counts = {"users": len(user_ids), "items": len(recs), "fallback_items": len(fallback)}
    _write_meta(client, keys, {**meta, "status": STAGED, "counts": counts, "bytes": size})
    report = StageReport(
        version, len(user_ids), len(recs), len(fallback), size, time.perf_counter() - started
    )
    log.info(
        "staged %s: %d users, %d bytes in %.1f s", version, len(user_ids), size, report.seconds
    )
    return report


def verify_table(
    client: redis.Redis,
    prefix: str,
    version: str,
    *,
    expected_users: Iterable[int] | int,
    sample: int = 200,
) -> VerifyReport:
    """Check a staged version is complete and well formed; mark it verified or raise PublishError.

    Given user ids, each one's key must exist (pipelined EXISTS in batches); given a count, the
    version must hold exactly that many user keys. Up to `sample` payloads, the fallback and the
    meta record are validated against the JSON schemas and the rank/duplicate rules.
    """
    started = time.perf_counter()
    keys = Keys(prefix)
    meta = _read_meta(client, keys, version)
    if meta["status"] == STAGING:
        raise PublishError(f"version {version} was never fully staged (its run died?)")
    _check_meta(meta, version)
    if isinstance(expected_users, int):
        user_keys = sorted(_scan(client, keys.version_pattern(version, "u:*")))
        _check_count(version, len(user_keys), expected_users)
    else:
        user_keys = [keys.user(version, uid) for uid in dict.fromkeys(map(int, expected_users))]
        _check_exist(client, version, user_keys)
    _check_count(version, meta["counts"]["users"], len(user_keys))
    picked = _sample(user_keys, sample, seed=version)
    raws = _pipelined(client, "get", [*picked, keys.fallback(version)])
    for key, raw in zip([*picked, keys.fallback(version)], raws, strict=True):
        _check_payload(key, raw, version, personal=key != keys.fallback(version))
    if meta["status"] in (STAGED, VERIFIED):
        _write_meta(client, keys, {**meta, "status": VERIFIED}, keep_ttl=True)
    report = VerifyReport(version, len(user_keys), len(picked), time.perf_counter() - started)
    log.info("verified %s: %d users, %d payloads sampled", version, len(user_keys), len(picked))
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
    _persist_complete(client, keys, version, meta["counts"]["users"], ttl_seconds)
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
    _persist_complete(client, keys, target, meta["counts"]["users"], ttl_seconds)
    restored = {**meta, "status": LIVE, "activated_at": _now()}
    _switch(client, keys, target, restored, expected_current=current)
    _retire(client, keys, current, ROLLED_BACK, ttl_seconds)
    log.warning("rolled back from %s to %s", current, target)
    return current, target


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
    found = sorted(_scan(client, keys.version_pattern(version)))
    removed = sum(_pipelined(client, "unlink", found))
    client.zrem(keys.versions, version)
    log.info("deleted %s (%d keys)", version, removed)
    return removed


def read_user_recs(client: redis.Redis, prefix: str, user_id: int) -> UserRecs:
    """What a product app does: read the pointer, then the user's key, else the fallback."""
    keys = Keys(prefix)
    version = _current(client, keys)
    if version is None:
        raise DataNotFound(f"no live recommendations table under {keys.root}")
    raw = client.get(keys.user(version, user_id))
    personal = raw is not None
    if raw is None:
        raw = client.get(keys.fallback(version))
    if raw is None:
        raise UnknownUser(f"user {user_id} has no row and table {version} has no fallback")
    return {
        "user_id": user_id,
        "personal": personal,
        "table_version": version,
        "payload": json.loads(raw),
    }


# Entry points bound to the settings: what the nightly DAG's tasks and the `inbo` CLI call.


def publish_batch(
    interval_end: datetime, models_run_id: str | None = None, settings: Settings | None = None
) -> str:
    """Stage the batch's `recs` and `recs_fallback` lake partitions as a new version; return it.

    `generated_at` is the time of staging: it tells apps how old the table is, while the meta
    record's `batch` names the data interval it was computed from.
    """
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    recs, fallback = _batch_tables(settings, batch)
    with redis_connection(settings) as client:
        report = stage_table(
            client,
            settings.redis_prefix,
            recs,
            fallback,
            batch=batch,
            models=_models_used(recs, fallback, batch, models_run_id),
            batch_size=settings.publish_batch_size,
            generated_at=datetime.now(UTC),
        )
    return report.version


def verify_batch(interval_end: datetime, version: str, settings: Settings | None = None) -> str:
    """Verify `version` holds every user of the batch's lake partition; return the version."""
    settings = settings or get_settings()
    recs, _ = _batch_tables(settings, batch_key(interval_end))
    with redis_connection(settings) as client:
        verify_table(
            client, settings.redis_prefix, version, expected_users=recs["user_id"].unique()
        )
    return version


def activate_version(version: str, settings: Settings | None = None) -> str | None:
    """Make `version` live; return the version it replaced."""
    settings = settings or get_settings()
    with redis_connection(settings) as client:
        return activate(client, settings.redis_prefix, version, settings.version_ttl_seconds)


def rollback_table(to: str | None = None, settings: Settings | None = None) -> tuple[str, str]:
    """`rollback` with the platform's settings; returns (from_version, to_version)."""
    settings = settings or get_settings()
    with redis_connection(settings) as client:
        return rollback(client, settings.redis_prefix, to, ttl_seconds=settings.version_ttl_seconds)


def table_versions(settings: Settings | None = None) -> list[dict[str, Any]]:
    """`list_versions` with the platform's settings."""
    settings = settings or get_settings()
    with redis_connection(settings) as client:
        return list_versions(client, settings.redis_prefix)


def read_recs(user_id: int, settings: Settings | None = None) -> UserRecs:
    """`read_user_recs` with the platform's settings."""
    settings = settings or get_settings()
    with redis_connection(settings) as client:
        return read_user_recs(client, settings.redis_prefix, user_id)


def sample_users(count: int, settings: Settings | None = None) -> list[int]:
    """Up to `count` users with a personal row in the live table, in id order (for demos)."""
    settings = settings or get_settings()
    keys = Keys(settings.redis_prefix)
    with redis_connection(settings) as client:
        version = _current(client, keys)
        if version is None:
            raise DataNotFound(f"no live recommendations table under {keys.root}")
        found: set[int] = set()
        for name in client.scan_iter(match=keys.version_pattern(version, "u:*"), count=SCAN_COUNT):
            found.add(_user_of(_text(name)))
            if len(found) >= count:
                break
    return sorted(found)


def redis_cli_example(url: str, prefix: str | None = None, user_id: int = 1) -> str:
    """A copy-paste redis-cli command reading a user's row the way apps do (password masked)."""
    root = Keys(prefix or get_settings().redis_prefix).root
    cli = f"{redis_binary('redis-cli')} -u {masked_url(url)}"
    return f'{cli} GET "{root}:$({cli} GET {root}:current):u:{user_id}"'


@lru_cache(maxsize=2)
def schema_validator(path: str = str(USER_RECS_SCHEMA)) -> Validator:
    """A compiled validator for one of the contract's JSON schemas (docs/schemas)."""
    import jsonschema

    schema = json.loads(Path(path).read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def _prepared(frame: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    """`frame` reduced to `columns`, sorted by user and rank, after the checks JSON cannot make."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PublishError(f"{name} lacks columns {missing}")
    frame = frame[list(columns)]
    not_int = [c for c in INTEGER_COLUMNS if c in columns and not is_integer_dtype(frame[c])]
    if not_int:
        raise PublishError(f"{name} columns {not_int} must have an integer dtype")
    if frame.isna().to_numpy().any():
        raise PublishError(f"{name} has nulls in {frame.columns[frame.isna().any()].tolist()}")
    if not np.isfinite(frame["score"].to_numpy(dtype=float)).all():
        raise PublishError(f"{name} has scores that are not finite numbers")
    group = ["user_id"] if "user_id" in columns else []
    frame = frame.sort_values([*group, "rank"], kind="stable", ignore_index=True)
    position = frame.groupby(group).cumcount() + 1 if group else pd.RangeIndex(1, len(frame) + 1)
    if not (frame["rank"].to_numpy() == np.asarray(position)).all():
        raise PublishError(f"{name} ranks are not 1..n per user")
    if frame.duplicated([*group, "item_id"]).any():
        raise PublishError(f"{name} lists an item twice for one user")
    return frame


def _item_fragments(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row, in row order.

    Source and reason repeat a lot, so each distinct triple is JSON-encoded once and reused;
    the rest is one f-string per row, the fastest of the variants measured.
    """
    if frame.empty:
        return []
    codes = frame.groupby(REASON_COLUMNS, sort=False).ngroup().to_numpy()
    _, first_rows = np.unique(codes, return_index=True)
    distinct = frame[REASON_COLUMNS].iloc[first_rows].itertuples(index=False)
    tails = np.array([_item_tail(*triple) for triple in distinct], dtype=object)[codes]
    return [
        f'{{"item_id":{item},"rank":{rank},"score":{score:.6g}{tail}'
        for item, rank, score, tail in zip(
            frame["item_id"].tolist(),
            frame["rank"].tolist(),
            frame["score"].tolist(),
            tails.tolist(),
            strict=True,
        )
    ]


def _item_tail(source: str, code: str, text: str) -> str:
    """The end of an item's JSON object, from `source` on."""
    source, code, text = (json.dumps(value, ensure_ascii=False) for value in (source, code, text))
    return f',"source":{source},"reason":{{"code":{code},"text":{text}}}}}'


def _user_payloads(recs: pd.DataFrame, version: str, stamp: str) -> tuple[list[int], list[bytes]]:
    """User ids and their JSON payloads from recs sorted by user and rank."""
    if recs.empty:
        return [], []
    fragments = _item_fragments(recs)
    users = recs["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    ids = users[starts].tolist()
    payloads = [
        _payload(uid, version, stamp, fragments[start:end])
        for uid, start, end in zip(ids, starts.tolist(), ends.tolist(), strict=True)
    ]
    return ids, payloads


def _payload(user_id: int | None, version: str, stamp: str, fragments: list[str]) -> bytes:
    user = "null" if user_id is None else str(user_id)
    head = f'{{"user_id":{user},"table_version":"{version}","generated_at":"{stamp}","items":['
    return (head + ",".join(fragments) + "]}").encode()


def _reserve_version(client: redis.Redis, keys: Keys, meta: dict[str, Any], ttl: int) -> str:
    """A new version id `<batch>-<6 hex>`, claimed by creating its meta key with SET NX."""
    for _ in range(5):
        version = f"{meta['batch']}-{secrets.token_hex(3)}"
        record = {"version": version, **meta}
        if client.set(keys.meta(version), json.dumps(record), ex=ttl, nx=True):
            client.zadd(keys.versions, {version: time.time()})
            return version
    raise PublishError(f"could not find an unused version id for batch {meta['batch']}")


def _set_batches(
    client: redis.Redis, names: list[str], values: list[bytes], batch_size: int, ttl: int
) -> None:
    for name_chunk, value_chunk in zip(
        _chunks(names, batch_size), _chunks(values, batch_size), strict=True
    ):
        with client.pipeline(transaction=False) as pipe:
            for name, value in zip(name_chunk, value_chunk, strict=True):
                pipe.set(name, value, ex=ttl)
            pipe.execute()


def _read_meta(client: redis.Redis, keys: Keys, version: str) -> dict[str, Any]:
    raw = client.get(keys.meta(version))
    if raw is None:
        raise PublishError(
            f"version {version} does not exist or has expired (no {keys.meta(version)})"
        )
    meta: dict[str, Any] = json.loads(raw)
    return meta


def _write_meta(
    client: redis.Redis, keys: Keys, meta: dict[str, Any], *, keep_ttl: bool = True
) -> None:
    client.set(keys.meta(meta["version"]), json.dumps(meta), keepttl=keep_ttl)


def _check_meta(meta: dict[str, Any], version: str) -> None:
    error = next(schema_validator(str(META_SCHEMA)).iter_errors(meta), None)
    if error is not None or meta.get("version") != version:
        detail = error.message if error else f"its version field is {meta.get('version')}"
        raise PublishError(f"meta record of {version} is malformed: {detail}")


def _check_count(version: str, found: int, expected: int) -> None:
    if found != expected:
        raise PublishError(f"version {version} holds {found} user rows, expected {expected}")


def _check_exist(client: redis.Redis, version: str, user_keys: list[str]) -> None:
    flags = _pipelined(client, "exists", user_keys)
    missing = [_user_of(key) for key, flag in zip(user_keys, flags, strict=True) if not flag]
    if missing:
        raise PublishError(
            f"version {version} is incomplete: {len(missing)} of {len(user_keys)} users have no "
            f"row (first: {', '.join(map(str, missing[:5]))})"
        )


def _check_payload(key: str, raw: str | bytes | None, version: str, *, personal: bool) -> None:
    """Schema, version, user id, ranks 1..n and no item twice, for one stored payload."""
    if raw is None:
        raise PublishError(f"{key} is missing")
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise PublishError(f"{key} is not valid JSON: {exc}") from None
    error = next(schema_validator().iter_errors(payload), None)
    if error is not None:
        path = "/".join(map(str, error.absolute_path))
        raise PublishError(f"{key} breaks the contract at /{path}: {error.message}")
    items = payload["items"]
    user_id = _user_of(key) if personal else None
    if payload["table_version"] != version:
        raise PublishError(f"{key} has table_version {payload['table_version']}")
    if payload["user_id"] != user_id:
        raise PublishError(f"{key} has user_id {payload['user_id']}, expected {user_id}")
    if [item["rank"] for item in items] != list(range(1, len(items) + 1)):
        raise PublishError(f"{key} has ranks that are not 1..n in order")
    if len({item["item_id"] for item in items}) != len(items):
        raise PublishError(f"{key} lists an item twice")


def _persist_complete(
    client: redis.Redis, keys: Keys, version: str, users: int, ttl_seconds: int
) -> None:
    """Remove the TTL of every key of `version`, then check they are all still there.

    Counting after PERSIST is what makes the check final: nothing can expire afterwards. If keys
    are missing, the survivors get `ttl_seconds` back so they still clean themselves up.
    """
    found = sorted(_scan(client, keys.version_pattern(version)))
    _pipelined(client, "persist", found)
    present = sum(_pipelined(client, "exists", found))
    has_fallback = bool(client.exists(keys.fallback(version)))
    if present != users + 2 or not has_fallback:
        _pipelined(client, "expire", found, ttl_seconds)
        raise PublishError(
            f"version {version} is incomplete ({present} of {users + 2} keys, fallback "
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
    """Point `current` at `version` and store its meta in one transaction.

    WATCH on the pointer turns a concurrent switch by another run into a clear error instead of
    one run silently retiring the other's version.
    """
    with client.pipeline() as pipe:
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
        _write_meta(client, keys, meta, keep_ttl=False)
    found = sorted(_scan(client, keys.version_pattern(version)))
    _pipelined(client, "expire", found, ttl_seconds)
    log.info("%s is %s; its %d keys expire in %d s", version, status, len(found), ttl_seconds)


def _forget_expired(client: redis.Redis, keys: Keys) -> None:
    """Drop versions whose meta has expired from the versions set."""
    members = [_text(m) for m in client.zrange(keys.versions, 0, -1)]
    flags = _pipelined(client, "exists", [keys.meta(m) for m in members])
    gone = [m for m, flag in zip(members, flags, strict=True) if not flag]
    if gone:
        client.zrem(keys.versions, *gone)


def _scan(client: redis.Redis, pattern: str) -> set[str]:
    """Key names matching `pattern`; a set because SCAN may return a key more than once."""
    return {_text(name) for name in client.scan_iter(match=pattern, count=SCAN_COUNT)}


def _pipelined(
    client: redis.Redis, command: str, names: list[str], *args: Any, batch_size: int = SCAN_COUNT
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


def _user_of(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


def _batch_tables(settings: Settings, batch: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The batch's per-user recommendations and fallback list from the lake."""
    lake = Lake(settings.lake)
    recs = lake.read("recs", {"batch": batch}, "part", RECOMMENDATIONS)
    return recs, lake.read("recs_fallback", {"batch": batch}, "part")


def _models_used(
    recs: pd.DataFrame, fallback: pd.DataFrame, batch: str, run_id: str | None
) -> dict[str, str]:
    """Each source in the table -> where its model comes from (the MLflow run when known)."""
    origin = f"mlflow run {run_id}" if run_id else f"models of batch {batch}"
    sources = sorted({*recs["source"].unique().tolist(), *fallback["source"].unique().tolist()})
    return {source: origin for source in sources}


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


def _current(client: redis.Redis, keys: Keys) -> str | None:
    """The live version id, or None before the first activation."""
    value = client.get(keys.current)
    return None if value is None else _text(value)


def _text(value: object) -> str:
    """A reply as `str`, whichever `decode_responses` the client was made with."""
    return value.decode() if isinstance(value, bytes) else str(value)
