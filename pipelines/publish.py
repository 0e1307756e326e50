"""Publishing recommendation tables to Redis under the versioned contract v1 (docs/redis-contract.md).

A run writes a whole new table version next to the live one, checks it, then moves one pointer:
`stage_table` -> `verify_table` -> `activate`. Readers follow the pointer, so they see the old
table or the new one, never a mix, and the old one stays readable (with a TTL) for `rollback`.
A version holds every user's list, the fallback list and, when given, each item's "more like
this" list: all of them switch and roll back together.

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
SIMILAR_SCHEMA = SCHEMA_DIR / "similar-items.v1.schema.json"
SIMILAR_TABLE = "features/more_like_this"
"""Lake table of each item's similar items (item_id, similar_item_id, score), per batch."""
SCORE_REPORTS = "_reports/score"
"""Where `pipelines.recommend.score_users` records the batch's summary, incl. the models used."""

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
SIMILAR_COLUMNS: tuple[str, ...] = ("item_id", "similar_item_id", "score")
REASON_COLUMNS = ["source", "reason_code", "reason"]
INTEGER_COLUMNS = ("user_id", "rank", "item_id", "similar_item_id")
_BATCH = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class KeyKind:
    """A kind of per-id key in a version (users, similar items), named for the checks' messages."""

    segment: str
    rows: str
    missing: str


USERS = KeyKind("u", "user rows", "users have no row")
SIMILAR = KeyKind("similar", "similar-items lists", "items have no similar-items list")


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
        return self.member(version, USERS.segment, user_id)

    def similar(self, version: str, item_id: int) -> str:
        """The "more like this" list of one item."""
        return self.member(version, SIMILAR.segment, item_id)

    def member(self, version: str, segment: str, member_id: int) -> str:
        return f"{self.root}:{version}:{segment}:{member_id}"

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
    similar_items: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_table` checked."""

    version: str
    users_checked: int
    similar_checked: int
    sampled: int
    seconds: float


class UserRecs(TypedDict):
    """A reader's answer: the payload, and whether it was the user's own row or the fallback."""

    user_id: int
    personal: bool
    table_version: str
    payload: dict[str, Any]


class SimilarItem(TypedDict):
    item_id: int
    rank: int
    score: float


class SimilarItems(TypedDict):
    """A "more like this" payload (docs/schemas/similar-items.v1.schema.json)."""

    item_id: int
    table_version: str
    generated_at: str
    items: list[SimilarItem]


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
    similar: pd.DataFrame | None = None,
    staging_ttl_seconds: int = STAGING_TTL_SECONDS,
) -> StageReport:
    """Write a new version's user keys, fallback, similar-items keys and meta record, not live yet.

    `similar` has columns item_id, similar_item_id, score; each item's list is ranked by score,
    best first (ties by similar_item_id). Keys are written with pipelined `SET ... EX` in batches
    of `batch_size` (measured faster than MSET followed by EXPIRE, which the staging TTL would
    need); the TTL is removed by `activate`.
    """
    started = time.perf_counter()
    if not _BATCH.fullmatch(batch):
        raise PublishError(f"batch {batch!r} may only contain letters, digits, '_', '.', '-'")
    keys = Keys(prefix)
    recs = _prepared(recs, USER_COLUMNS, "recs")
    fallback = _prepared(fallback, FALLBACK_COLUMNS, "fallback")
    similar = _prepared_similar(similar)
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
    item_ids, similar_payloads = _similar_payloads(similar, version, stamp)
    fallback_payload = _payload("user_id", None, version, stamp, _item_fragments(fallback))
    _set_batches(
        client,
        [keys.user(version, uid) for uid in user_ids]
        + [keys.fallback(version)]
        + [keys.similar(version, iid) for iid in item_ids],
        [*payloads, fallback_payload, *similar_payloads],
        batch_size,
        staging_ttl_seconds,
    )
    size = sum(map(len, payloads)) + len(fallback_payload) + sum(map(len, similar_payloads))
    counts = {
        "users": len(user_ids),
        "items": len(recs),
        "fallback_items": len(fallback),
        "similar_items": len(item_ids),
    }
    _write_meta(client, keys, {**meta, "status": STAGED, "counts": counts, "bytes": size})
    report = StageReport(
        version,
        len(user_ids),
        len(recs),
        len(fallback),
        len(item_ids),
        size,
        time.perf_counter() - started,
    )
    log.info(
        "staged %s: %d users, %d similar-items lists, %d bytes in %.1f s",
        version,
        len(user_ids),
        len(item_ids),
        size,
        report.seconds,
    )
    return report


def verify_table(
    client: redis.Redis,
    prefix: str,
    version: str,
    *,
    expected_users: Iterable[int] | int,
    expected_similar: Iterable[int] | int | None = None,
    sample: int = 200,
) -> VerifyReport:
    """Check a staged version is complete and well formed; mark it verified or raise PublishError.

    Given user ids, each one's key must exist (pipelined EXISTS in batches); given a count, the
    version must hold exactly that many user keys. `expected_similar` does the same for the
    similar-items keys by item id; None means the count recorded in the meta record. Up to
    `sample` user payloads, `sample` similar-items payloads, the fallback and the meta record are
    validated against the JSON schemas and the rank/duplicate rules.
    """
    started = time.perf_counter()
    keys = Keys(prefix)
    meta = _read_meta(client, keys, version)
    if meta["status"] == STAGING:
        raise PublishError(f"version {version} was never fully staged (its run died?)")
    _check_meta(meta, version)
    counts = meta["counts"]
    user_keys = _expected_keys(client, keys, version, USERS, expected_users, counts["users"])
    recorded = counts.get("similar_items", 0)
    expected = recorded if expected_similar is None else expected_similar
    similar_keys = _expected_keys(client, keys, version, SIMILAR, expected, recorded)
    picked = _sample(user_keys, sample, seed=version)
    picked_similar = _sample(similar_keys, sample, seed=f"{version}:similar")
    user_side = [*picked, keys.fallback(version)]
    raws = _pipelined(client, "get", [*user_side, *picked_similar])
    for key, raw in zip(user_side, raws[: len(user_side)], strict=True):
        _check_payload(key, raw, version, personal=key != keys.fallback(version))
    for key, raw in zip(picked_similar, raws[len(user_side) :], strict=True):
        _check_similar_payload(key, raw, version)
    if meta["status"] in (STAGED, VERIFIED):
        _write_meta(client, keys, {**meta, "status": VERIFIED}, keep_ttl=True)
    report = VerifyReport(
        version,
        len(user_keys),
        len(similar_keys),
        len(picked) + len(picked_similar),
        time.perf_counter() - started,
    )
    log.info(
        "verified %s: %d users, %d similar-items lists, %d payloads sampled",
        version,
        len(user_keys),
        len(similar_keys),
        report.sampled,
    )
    return report


def activate(client: redis.Redis, prefix: str, version: str, ttl_seconds: int) -> str | None:
    """Make a verified version live; return the version it replaced (None for the first).

    Its keys (users, fallback, similar items, meta) lose their staging TTL and are counted first,
    so the pointer never moves to an incomplete table. The pointer and the meta status change in
    one MULTI/EXEC. The replaced version's keys then expire after `ttl_seconds`, leaving that long
    to roll back.
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


def read_similar_items(client: redis.Redis, prefix: str, item_id: int) -> SimilarItems | None:
    """What a product app does for "more like this": read the pointer, then the item's key.

    None when the live table has no list for the item (e.g. it has no embedding yet).
    """
    keys = Keys(prefix)
    version = _current(client, keys)
    if version is None:
        raise DataNotFound(f"no live recommendations table under {keys.root}")
    raw = client.get(keys.similar(version, item_id))
    if raw is None:
        return None
    payload: SimilarItems = json.loads(raw)
    return payload


# Entry points bound to the settings: what the nightly DAG's tasks and the `inbo` CLI call.


def publish_batch(interval_end: datetime, settings: Settings | None = None) -> str:
    """Stage the batch's lake tables as a new version; return it.

    The tables are `recs`, `recs_fallback` and, when the batch has one, `features/more_like_this`.
    The meta record's `models` comes from the batch's score report (`_reports/score/<batch>.json`,
    the registry versions the scores were made with). `generated_at` is the time of staging: it
    tells apps how old the table is, while the meta record's `batch` names the data interval it
    was computed from.
    """
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    recs, fallback = _batch_tables(settings, batch)
    similar = _batch_similar(settings, batch)
    with redis_connection(settings) as client:
        report = stage_table(
            client,
            settings.redis_prefix,
            recs,
            fallback,
            batch=batch,
            models=_models_used(settings, batch, recs, fallback, similar),
            batch_size=settings.publish_batch_size,
            generated_at=datetime.now(UTC),
            similar=similar,
        )
    return report.version


def verify_batch(interval_end: datetime, version: str, settings: Settings | None = None) -> str:
    """Verify `version` holds every user and similar-items list of the batch; return it.

    No similar-items lists are expected when the batch has no more_like_this table.
    """
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    recs, _ = _batch_tables(settings, batch)
    similar = _batch_similar(settings, batch)
    items = [] if similar is None else similar["item_id"].unique().tolist()
    with redis_connection(settings) as client:
        verify_table(
            client,
            settings.redis_prefix,
            version,
            expected_users=recs["user_id"].unique(),
            expected_similar=items,
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
        version = _current(client, keys)
        if version is None:
            raise DataNotFound(f"no live recommendations table under {keys.root}")
        found: set[int] = set()
        for name in client.scan_iter(match=keys.version_pattern(version, "u:*"), count=SCAN_COUNT):
            found.add(_id_of(_text(name)))
            if len(found) >= count:
                break
    return sorted(found)


def redis_cli_example(url: str, prefix: str | None = None, user_id: int = 1) -> str:
    """A copy-paste redis-cli command reading a user's row the way apps do (password masked)."""
    root = Keys(prefix or get_settings().redis_prefix).root
    cli = f"{redis_binary('redis-cli')} -u {masked_url(url)}"
    return f'{cli} GET "{root}:$({cli} GET {root}:current):u:{user_id}"'


@lru_cache(maxsize=4)
def schema_validator(path: str = str(USER_RECS_SCHEMA)) -> Validator:
    """A compiled validator for one of the contract's JSON schemas (docs/schemas)."""
    import jsonschema

    schema = json.loads(Path(path).read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def _prepared(frame: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    """`frame` reduced to `columns`, sorted by user and rank, after the checks JSON cannot make."""
    frame = _checked_columns(frame, columns, name)
    group = ["user_id"] if "user_id" in columns else []
    frame = frame.sort_values([*group, "rank"], kind="stable", ignore_index=True)
    position = frame.groupby(group).cumcount() + 1 if group else pd.RangeIndex(1, len(frame) + 1)
    if not (frame["rank"].to_numpy() == np.asarray(position)).all():
        raise PublishError(f"{name} ranks are not 1..n per user")
    if frame.duplicated([*group, "item_id"]).any():
        raise PublishError(f"{name} lists an item twice for one user")
    return frame


def _prepared_similar(frame: pd.DataFrame | None) -> pd.DataFrame:
    """Similar items with a `rank` per item (best score first, ties by id), sorted by item."""
    if frame is None:
        frame = pd.DataFrame({name: pd.Series(dtype="int64") for name in SIMILAR_COLUMNS})
    frame = _checked_columns(frame, SIMILAR_COLUMNS, "similar")
    if (frame["item_id"] == frame["similar_item_id"]).any():
        raise PublishError("similar lists an item as similar to itself")
    if frame.duplicated(["item_id", "similar_item_id"]).any():
        raise PublishError("similar lists an item twice for one item")
    frame = frame.sort_values(
        ["item_id", "score", "similar_item_id"],
        ascending=[True, False, True],
        kind="stable",
        ignore_index=True,
    )
    return frame.assign(rank=frame.groupby("item_id").cumcount() + 1)


def _checked_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    """`frame` reduced to `columns`: all present, integer ids, no nulls, finite scores."""
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
    return _grouped_payloads(recs["user_id"], _item_fragments(recs), "user_id", version, stamp)


def _similar_payloads(
    similar: pd.DataFrame, version: str, stamp: str
) -> tuple[list[int], list[bytes]]:
    """Item ids and their "more like this" payloads from similar items sorted by item and rank."""
    fragments = [
        f'{{"item_id":{item},"rank":{rank},"score":{score:.6g}}}'
        for item, rank, score in zip(
            similar["similar_item_id"].tolist(),
            similar["rank"].tolist(),
            similar["score"].tolist(),
            strict=True,
        )
    ]
    return _grouped_payloads(similar["item_id"], fragments, "item_id", version, stamp)


def _grouped_payloads(
    owners: pd.Series, fragments: list[str], field: str, version: str, stamp: str
) -> tuple[list[int], list[bytes]]:
    """One payload per run of equal `owners` (rows sorted by owner) and the owners' ids."""
    if owners.empty:
        return [], []
    values = owners.to_numpy()
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ids = values[starts].tolist()
    payloads = [
        _payload(field, owner, version, stamp, fragments[start:end])
        for owner, start, end in zip(ids, starts.tolist(), ends.tolist(), strict=True)
    ]
    return ids, payloads


def _payload(
    field: str, owner: int | None, version: str, stamp: str, fragments: list[str]
) -> bytes:
    """`{"<field>": owner, "table_version": ..., "generated_at": ..., "items": [fragments]}`."""
    value = "null" if owner is None else str(owner)
    head = f'{{"{field}":{value},"table_version":"{version}","generated_at":"{stamp}","items":['
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


def _expected_keys(
    client: redis.Redis,
    keys: Keys,
    version: str,
    kind: KeyKind,
    expected: Iterable[int] | int,
    recorded: int,
) -> list[str]:
    """The version's keys of `kind`, checked against `expected` and the meta record's count.

    Given ids, each must have its key (pipelined EXISTS); given a count, SCAN must find exactly
    that many. Either way the number must equal `recorded`, the count staged into the meta record.
    """
    if isinstance(expected, int):
        found = sorted(_scan(client, keys.version_pattern(version, f"{kind.segment}:*")))
        _check_count(version, kind, len(found), expected)
    else:
        found = [keys.member(version, kind.segment, i) for i in dict.fromkeys(map(int, expected))]
        _check_exist(client, version, kind, found)
    _check_count(version, kind, recorded, len(found))
    return found


def _check_count(version: str, kind: KeyKind, found: int, expected: int) -> None:
    if found != expected:
        raise PublishError(f"version {version} holds {found} {kind.rows}, expected {expected}")


def _check_exist(client: redis.Redis, version: str, kind: KeyKind, names: list[str]) -> None:
    flags = _pipelined(client, "exists", names)
    missing = [_id_of(key) for key, flag in zip(names, flags, strict=True) if not flag]
    if missing:
        raise PublishError(
            f"version {version} is incomplete: {len(missing)} of {len(names)} {kind.missing} "
            f"(first: {', '.join(map(str, missing[:5]))})"
        )


def _check_payload(key: str, raw: str | bytes | None, version: str, *, personal: bool) -> None:
    """Schema, version, user id, ranks 1..n and no item twice, for one stored payload."""
    payload = _parsed(key, raw, USER_RECS_SCHEMA)
    _check_list(key, payload, version, "user_id", _id_of(key) if personal else None)


def _check_similar_payload(key: str, raw: str | bytes | None, version: str) -> None:
    """As `_check_payload` for a similar-items payload; the item must not list itself."""
    payload = _parsed(key, raw, SIMILAR_SCHEMA)
    _check_list(key, payload, version, "item_id", _id_of(key))
    if any(item["item_id"] == payload["item_id"] for item in payload["items"]):
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


def _check_list(
    key: str, payload: dict[str, Any], version: str, field: str, owner: int | None
) -> None:
    """The payload's version and owner match its key; ranks run 1..n; no item appears twice."""
    items = payload["items"]
    if payload["table_version"] != version:
        raise PublishError(f"{key} has table_version {payload['table_version']}")
    if payload[field] != owner:
        raise PublishError(f"{key} has {field} {payload[field]}, expected {owner}")
    if [item["rank"] for item in items] != list(range(1, len(items) + 1)):
        raise PublishError(f"{key} has ranks that are not 1..n in order")
    if len({item["item_id"] for item in items}) != len(items):
        raise PublishError(f"{key} lists an item twice")


def _persist_complete(
    client: redis.Redis, keys: Keys, version: str, counts: dict[str, int], ttl_seconds: int
) -> None:
    """Remove the TTL of every key of `version`, then check they are all still there.

    Counting after PERSIST is what makes the check final: nothing can expire afterwards. If keys
    are missing, the survivors get `ttl_seconds` back so they still clean themselves up.
    Versions staged before similar items existed have no `similar_items` count: 0 then.
    """
    found = sorted(_scan(client, keys.version_pattern(version)))
    _pipelined(client, "persist", found)
    present = sum(_pipelined(client, "exists", found))
    has_fallback = bool(client.exists(keys.fallback(version)))
    expected = counts["users"] + counts.get("similar_items", 0) + 2  # + fallback and meta
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


def _id_of(key: str) -> int:
    """The user or item id at the end of a key."""
    return int(key.rsplit(":", 1)[1])


def _batch_tables(settings: Settings, batch: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The batch's per-user recommendations and fallback list from the lake."""
    lake = Lake(settings.lake)
    recs = lake.read("recs", {"batch": batch}, "part", RECOMMENDATIONS)
    return recs, lake.read("recs_fallback", {"batch": batch}, "part")


def _batch_similar(settings: Settings, batch: str) -> pd.DataFrame | None:
    """The batch's more_like_this table, or None when the batch has none (no embeddings)."""
    lake = Lake(settings.lake)
    if not lake.exists(SIMILAR_TABLE, {"batch": batch}, "part"):
        log.info("batch %s has no %s table; publishing no similar items", batch, SIMILAR_TABLE)
        return None
    return lake.read(SIMILAR_TABLE, {"batch": batch}, "part")


def _models_used(
    settings: Settings,
    batch: str,
    recs: pd.DataFrame,
    fallback: pd.DataFrame,
    similar: pd.DataFrame | None,
) -> dict[str, Any]:
    """The models behind the table: the score report's registry versions, else its sources."""
    try:
        report = json.loads(Lake(settings.lake).read_json(SCORE_REPORTS, batch))
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
        "instead (re-run score_users for the batch to record the model versions)",
        SCORE_REPORTS,
        batch,
    )
    sources = {*recs["source"].unique().tolist(), *fallback["source"].unique().tolist()}
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


def _current(client: redis.Redis, keys: Keys) -> str | None:
    """The live version id, or None before the first activation."""
    value = client.get(keys.current)
    return None if value is None else _text(value)


def _text(value: object) -> str:
    """A reply as `str`, whichever `decode_responses` the client was made with."""
    return value.decode() if isinstance(value, bytes) else str(value)
