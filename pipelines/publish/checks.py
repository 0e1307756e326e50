"""The checks a staged version must pass before it may go live: shards, keys, payloads, meta."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inbo.errors import PublishError
from inbo.reasons import Reason
from pipelines.publish.contract import (
    META_SCHEMA,
    SCAN_COUNT,
    SIMILAR_SCHEMA,
    USER_RECS_SCHEMA,
    KeyKind,
    Keys,
    schema_validator,
)
from pipelines.publish.redis_io import id_of, in_chunks, pipelined, text

if TYPE_CHECKING:
    import redis


def shard_records(
    client: redis.Redis, keys: Keys, version: str, shards: int
) -> dict[int, dict[str, int]]:
    """The registry's record of every shard; PublishError naming the shards not staged yet."""
    raw = client.hgetall(keys.shards(version))
    records = {int(text(k)): json.loads(v) for k, v in raw.items()}
    missing = [s for s in range(shards) if s not in records]
    if missing:
        raise PublishError(
            f"version {version} is incomplete: {len(missing)} of {shards} shards were not staged "
            f"(first: {', '.join(map(str, missing[:5]))})"
        )
    return records


def totalled(meta: dict[str, Any], records: dict[int, dict[str, int]]) -> dict[str, Any]:
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


def check_meta(meta: dict[str, Any], version: str) -> None:
    error = next(schema_validator(str(META_SCHEMA)).iter_errors(meta), None)
    if error is not None or meta.get("version") != version:
        detail = error.message if error else f"its version field is {meta.get('version')}"
        raise PublishError(f"meta record of {version} is malformed: {detail}")


def check_exist(client: redis.Redis, version: str, kind: KeyKind, names: list[str]) -> None:
    """Every key exists: one multi-key EXISTS per batch (split by slot on a cluster), and the
    per-key EXISTS only of a batch that came up short, to name what is missing."""
    missing: list[int] = []
    for chunk in in_chunks(names, SCAN_COUNT):
        if client.exists(*chunk) < len(chunk):
            flags = pipelined(client, "exists", list(chunk))
            missing += [id_of(key) for key, flag in zip(chunk, flags, strict=True) if not flag]
    if missing:
        raise PublishError(
            f"version {version} is incomplete: {len(missing)} of {len(names)} {kind.missing} "
            f"(first: {', '.join(map(str, missing[:5]))})"
        )


def check_payload(key: str, raw: str | bytes | None, reasons: Sequence[Reason]) -> None:
    """Schema, equal column lengths, no item twice, known reasons with the refs they need."""
    payload = parsed(key, raw, USER_RECS_SCHEMA)
    items, indexes, refs = payload["items"], payload["reasons"], payload["refs"]
    if not len(items) == len(indexes) == len(refs):
        raise PublishError(f"{key} has items, reasons and refs of different lengths")
    if len(set(items)) != len(items):
        raise PublishError(f"{key} lists an item twice")
    if max(indexes) >= len(reasons):
        raise PublishError(f"{key} names reason {max(indexes)}; the version has {len(reasons)}")
    if any(reasons[i].needs_ref and ref is None for i, ref in zip(indexes, refs, strict=True)):
        raise PublishError(f"{key} lacks a ref its reason's template needs")


def check_similar_payload(key: str, raw: str | bytes | None) -> None:
    """Schema, equal lengths, no item twice and never the item itself."""
    payload = parsed(key, raw, SIMILAR_SCHEMA)
    items = payload["items"]
    if len(items) != len(payload["scores"]):
        raise PublishError(f"{key} has items and scores of different lengths")
    if len(set(items)) != len(items):
        raise PublishError(f"{key} lists an item twice")
    if id_of(key) in items:
        raise PublishError(f"{key} lists the item as similar to itself")


def parsed(key: str, raw: str | bytes | None, schema: Path) -> dict[str, Any]:
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
