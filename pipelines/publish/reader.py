"""The reference reader: what a product app does to read a user's table or a "more like this".

One pointer GET, one GET of the user's key (else the fallback), and the version's meta record for
the reason templates, which apps cache per version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from inbo.errors import DataNotFound, UnknownUser
from inbo.reasons import Catalogue, Reason, render
from pipelines.publish.contract import Keys, reasons_of
from pipelines.publish.redis_io import live_version, read_meta

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

PIPELINE_KEYS = 2000
"""User keys per pipelined round trip of a batch read: bounded replies, few round trips."""


class RecItem(TypedDict):
    """One decoded item: `reason` is the rendered text, None when no catalogue was given."""

    item_id: int
    rank: int
    source: str
    reason_code: str
    reason_ref: int | None
    reason: str | None


class UserRecs(TypedDict):
    """A reader's answer: the decoded items, whether they were the user's own, the experiment
    variant the list is served under (None on the fallback or outside experiments), the raw
    payload."""

    user_id: int
    personal: bool
    table_version: str
    variant: str | None
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


def read_user_recs(
    client: redis.Redis, prefix: str, user_id: int, catalogue: Catalogue | None = None
) -> UserRecs:
    """What a product app does: read the pointer, the user's key (else the fallback), the meta.

    Items are decoded; with a `catalogue` their reason texts are rendered too. Apps cache the
    meta record per version: within a version its reason list only grows.
    """
    keys = Keys(prefix)
    version = live_version(client, keys)
    raw = client.get(keys.user(version, user_id))
    fallback = client.get(keys.fallback(version)) if raw is None else None
    reasons = reasons_of(read_meta(client, keys, version))
    return _user_recs(user_id, version, raw, fallback, reasons, catalogue)


def read_many_user_recs(
    client: redis.Redis, prefix: str, user_ids: Sequence[int]
) -> list[UserRecs]:
    """`read_user_recs` for many users at once, as many app servers would: one pointer read, the
    users' keys in pipelined round trips, the fallback and the meta once, all of one version."""
    keys = Keys(prefix)
    version = live_version(client, keys)
    raws: list[bytes | str | None] = []
    for start in range(0, len(user_ids), PIPELINE_KEYS):
        with client.pipeline(transaction=False) as pipe:
            for user_id in user_ids[start : start + PIPELINE_KEYS]:
                pipe.get(keys.user(version, user_id))
            raws.extend(pipe.execute())
    fallback = client.get(keys.fallback(version)) if None in raws else None
    reasons = reasons_of(read_meta(client, keys, version))
    return [
        _user_recs(user_id, version, raw, fallback, reasons)
        for user_id, raw in zip(user_ids, raws, strict=True)
    ]


def _user_recs(
    user_id: int,
    version: str,
    raw: bytes | str | None,
    fallback: bytes | str | None,
    reasons: Sequence[Reason],
    catalogue: Catalogue | None = None,
) -> UserRecs:
    """One user's answer from their key's value, else the fallback's."""
    found = raw if raw is not None else fallback
    if found is None:
        raise UnknownUser(f"user {user_id} has no row and table {version} has no fallback")
    payload = json.loads(found)
    return {
        "user_id": user_id,
        "personal": raw is not None,
        "table_version": version,
        "variant": payload.get("variant"),
        "generated_at": payload["at"],
        "items": decode_items(payload, reasons, catalogue),
        "payload": payload,
    }


def read_similar_items(client: redis.Redis, prefix: str, item_id: int) -> SimilarItems | None:
    """What a product app does for "more like this": read the pointer, then the item's key.

    None when the live table has no list for the item (e.g. it has no embedding yet).
    """
    keys = Keys(prefix)
    version = live_version(client, keys)
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
    """A packed user or fallback payload as one record per item, rank = position.

    With a `catalogue`, as the contract tells apps to: an item the catalogue does not know (taken
    down since the table was scored) is left out, the others keep their published rank; a reason
    whose sentence names something the catalogue lacks (the issue a `because_you_read` refers
    to) gets no sentence (`reason` None) rather than a broken one.
    """
    decoded: list[RecItem] = []
    for rank, (item, index, ref) in enumerate(
        zip(payload["items"], payload["reasons"], payload["refs"], strict=True), 1
    ):
        if catalogue is not None and item not in catalogue:
            log.warning("item %s is not in the catalogue: not shown", item)
            continue
        reason = reasons[index]
        decoded.append(
            {
                "item_id": item,
                "rank": rank,
                "source": reason.source,
                "reason_code": reason.code,
                "reason_ref": ref,
                "reason": None if catalogue is None else _sentence(reason, ref, item, catalogue),
            }
        )
    return decoded


def _sentence(reason: Reason, ref: int | None, item: int, catalogue: Catalogue) -> str | None:
    try:
        return render(reason.template, ref, item, catalogue)
    except DataNotFound as exc:
        log.warning("no sentence for item %s: %s", item, exc)
        return None
