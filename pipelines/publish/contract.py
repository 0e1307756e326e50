"""Contract v2 of the Redis tables (docs/redis-contract.md): key names, statuses, payload columns.

The only place key names are spelled out. Control keys (pointer, versions, meta, shard registry)
carry the hash tag `{<prefix>}`, so on a Redis Cluster they share one slot and the pointer switch
is one WATCH/MULTI; data keys (users, similar items, fallback) carry none and spread over slots.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inbo.errors import PublishError
from inbo.reasons import REASONS, Reason
from inbo.settings import REPO_ROOT

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

CONTRACT_VERSION = 2
"""The major version, in every key name: a change old readers cannot read bumps it."""

CONTRACT_REVISION = "2.1"
"""The minor revision, in the meta record: 2.1 adds the optional `variant` of a user payload and
the meta record's `experiments`; keys and every 2.0 field are unchanged, so 2.0 readers work."""

STAGING_HORIZON_SECONDS = 24 * 3600
"""A version still staging or verified this long after it was reserved never went live: its run
died or was superseded, and garbage collection deletes it."""

SCAN_COUNT = 200
"""Keys per SCAN step and per multi-key EXISTS. Each is one command that Redis runs to the end
while every reader waits, so it is kept to ~0.1 ms (2,000 put verify's and activate's read p99
at 4-6 ms at 1M users). Pipelined single-key commands are batched by `PIPELINE_BATCH`."""

PIPELINE_BATCH = 2000

SCHEMA_DIR = REPO_ROOT / "docs" / "schemas"

USER_RECS_SCHEMA = SCHEMA_DIR / "user-recs.v2.schema.json"

META_SCHEMA = SCHEMA_DIR / "recs-meta.v2.schema.json"

SIMILAR_SCHEMA = SCHEMA_DIR / "similar-items.v2.schema.json"

STAGING, VERIFIED, LIVE, RETIRED, ROLLED_BACK, EXPIRING = (
    "staging",
    "verified",
    "live",
    "retired",
    "rolled_back",
    "expiring",
)
"""A version's states. staging -> verified -> live -> retired (or rolled_back) -> expiring ->
gone; a staging or verified version that never goes live -> expiring. Every transition is one
atomic write of control keys (one hash slot), so a crash leaves a version in one state or the
next; `expiring` (being deleted) is finished by the next garbage collection."""

FORMER_LIVE = (RETIRED, ROLLED_BACK)
"""States of a version that was live and may be rolled back to, within the rollback window."""

EXPIRED = "expired"
"""Reported by `list_versions` for a version whose meta record is gone; never stored."""

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

    def index(self, version: str) -> str:
        """The version's key index (`pipelines.publish.index`): every data key it owns."""
        return self.control(f"index:{version}")

    def user(self, version: str, user_id: int) -> str:
        return self.member(version, USERS.segment, user_id)

    def similar(self, version: str, item_id: int) -> str:
        """The "more like this" list of one item."""
        return self.member(version, SIMILAR.segment, item_id)

    def member(self, version: str, segment: str, member_id: int) -> str:
        return self.members(version, segment) + str(member_id)

    def members(self, version: str, segment: str) -> str:
        """The common start of a version's keys of one kind (users `u`, similar items)."""
        return f"{self.root}:{version}:{segment}:"

    def fallback(self, version: str) -> str:
        return f"{self.root}:{version}:fallback"

    def version_pattern(self, version: str, suffix: str = "*") -> str:
        """SCAN MATCH pattern for a version's data keys; glob characters are escaped."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", f"{self.root}:{version}:") + suffix


@lru_cache(maxsize=4)
def schema_validator(path: str = str(USER_RECS_SCHEMA)) -> Validator:
    """A compiled validator for one of the contract's JSON schemas (docs/schemas)."""
    import jsonschema

    schema = json.loads(Path(path).read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def reason_records() -> list[dict[str, str]]:
    """The reason table as a version's meta record stores it: code, source, template."""
    return [{"code": r.code, "source": r.source, "template": r.template} for r in REASONS]


def reasons_of(meta: dict[str, Any]) -> list[Reason]:
    """The reason list a version was published with; payloads index into it."""
    return [
        Reason(r["code"], r["source"], r["template"], priority=position)
        for position, r in enumerate(meta["reasons"])
    ]
