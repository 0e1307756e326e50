"""The publish steps bound to the settings: what the nightly DAG's tasks and the `inbo` CLI call.

`begin_publish` -> `publish_shards` (each writer task stages every n-th user shard with
`publish_shard`) -> `verify_version` -> `activate_version`; `rollback_table` switches back. Each
reads the batch's lake tables (score shards, fallback, more-like-this) and calls one function of
`pipelines.publish.versions` with a Redis connection.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inbo import tables
from inbo.errors import DataNotFound, PublishError
from inbo.lake import Lake, batch_key
from inbo.locks import PUBLISH, platform_lock
from inbo.reasons import Catalogue
from inbo.services import compact, durable_writes, masked_url, redis_binary, redis_connection
from inbo.settings import Settings, get_settings
from inbo.shards import shard_key, writer_shards
from pipelines.publish import index, lifecycle
from pipelines.publish.contract import USER_COLUMNS, USERS, Keys
from pipelines.publish.lifecycle import VersionInfo
from pipelines.publish.reader import SimilarItems, UserRecs, read_similar_items, read_user_recs
from pipelines.publish.redis_io import id_of, live_version, read_meta
from pipelines.publish.versions import ShardReport, begin_table, stage_shard, verify_table
from pipelines.score import plan_allocation, with_variants

log = logging.getLogger(__name__)

_SHARD_DIR = re.compile(r"shard=(\d+)of(\d+)")


def begin_publish(interval_end: datetime, shards: int, settings: Settings | None = None) -> str:
    """Reserve a version for the batch's `shards` user shards, stage its fallback and similar
    items (`recs_fallback`, `features/more_like_this` when the batch has one); return it.

    `models` in the meta record comes from the batch's score plan (`_reports/score/<batch>.json`);
    `generated_at` is the time of staging, the data interval is the meta record's `batch`.
    """
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    lake = Lake(settings.lake)
    fallback = lake.read_batch(tables.RECS_FALLBACK, batch)
    similar = _batch_similar(lake, batch)
    collect_garbage(settings)
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
            experiments=_served_policies(interval_end, settings),
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
    recs = with_variants(recs, plan_allocation(interval_end, settings))
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


def publish_shards(
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


def verify_version(interval_end: datetime, version: str, settings: Settings | None = None) -> str:
    """Verify `version` holds every user of every shard file and every similar-items list of
    the batch (none when it has no more_like_this table); return it."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    lake = Lake(settings.lake)
    similar = _batch_similar(lake, batch)
    items = [] if similar is None else similar["item_id"].unique().tolist()
    with redis_connection(settings) as client:
        shards = read_meta(client, Keys(settings.redis_prefix), version)["shards"]
        users = {
            s: _read_shard(lake, batch, s, shards, ["user_id"])["user_id"].to_numpy()
            for s in range(shards)
        }
        verify_table(
            client, settings.redis_prefix, version, expected_users=users, expected_similar=items
        )
    return version


def activate_version(version: str, settings: Settings | None = None) -> str | None:
    """Make `version` live under the publish lock, after the recovery pass; return the version
    it replaced. Acknowledged only once the switch is on disk (embedded Redis)."""
    settings = settings or get_settings()
    with platform_lock(settings, PUBLISH), redis_connection(settings) as client:
        _recover(client, settings)
        with durable_writes(settings, client):
            previous = lifecycle.activate(client, settings.redis_prefix, version)
    compact(settings)
    return previous


def collect_garbage(settings: Settings | None = None) -> list[str]:
    """Delete every version past its time under the publish lock (the nightly's last task, `inbo
    gc`, and the recovery pass before each switch); return the versions deleted."""
    settings = settings or get_settings()
    with platform_lock(settings, PUBLISH), redis_connection(settings) as client:
        return _recover(client, settings)


def remove_version(version: str, settings: Settings | None = None) -> int:
    """`inbo versions delete V`: delete a version that is not live; the data keys removed."""
    settings = settings or get_settings()
    with platform_lock(settings, PUBLISH), redis_connection(settings) as client:
        return lifecycle.delete_version(client, settings.redis_prefix, version)


def _recover(client: Any, settings: Settings) -> list[str]:
    return lifecycle.collect_garbage(
        client, settings.redis_prefix, rollback_window_seconds=settings.version_ttl_seconds
    )


def publish_batch(interval_end: datetime, settings: Settings | None = None) -> str:
    """`begin_publish` and one writer for every shard file of the batch, in this process."""
    settings = settings or get_settings()
    shards = _batch_shards(Lake(settings.lake), batch_key(interval_end))
    version = begin_publish(interval_end, shards, settings)
    publish_shards(interval_end, version, 0, 1, shards, settings)
    return version


@dataclass(frozen=True)
class Published:
    version: str
    previous: str | None


def publish_table(interval_end: datetime, settings: Settings | None = None) -> Published:
    """Every publish step of the batch in this process: begin, stage, verify, activate."""
    settings = settings or get_settings()
    version = verify_version(interval_end, publish_batch(interval_end, settings), settings)
    return Published(version, activate_version(version, settings))


def rollback_table(to: str | None = None, settings: Settings | None = None) -> tuple[str, str]:
    """`rollback` under the publish lock, after the recovery pass; returns (from, to),
    acknowledged once the switch is on disk (embedded Redis)."""
    settings = settings or get_settings()
    with platform_lock(settings, PUBLISH), redis_connection(settings) as client:
        _recover(client, settings)
        with durable_writes(settings, client):
            switched = lifecycle.rollback(client, settings.redis_prefix, to)
    compact(settings)
    return switched


def table_versions(settings: Settings | None = None) -> list[VersionInfo]:
    """`list_versions` with the platform's settings."""
    settings = settings or get_settings()
    with redis_connection(settings) as client:
        return lifecycle.list_versions(
            client, settings.redis_prefix, rollback_window_seconds=settings.version_ttl_seconds
        )


def read_recs(
    user_id: int, settings: Settings | None = None, catalogue: Catalogue | None = None
) -> UserRecs:
    """`read_user_recs` with the platform's settings."""
    settings = settings or get_settings()
    with redis_connection(settings, read_only=True) as client:
        return read_user_recs(client, settings.redis_prefix, user_id, catalogue)


def read_similar(item_id: int, settings: Settings | None = None) -> SimilarItems | None:
    """`read_similar_items` with the platform's settings."""
    settings = settings or get_settings()
    with redis_connection(settings, read_only=True) as client:
        return read_similar_items(client, settings.redis_prefix, item_id)


def sample_users(count: int, settings: Settings | None = None) -> list[int]:
    """The `count` lowest user ids with a personal row in the live table (for demos)."""
    settings = settings or get_settings()
    keys = Keys(settings.redis_prefix)
    with redis_connection(settings) as client:
        version = live_version(client, keys)
        owned = index.owned_keys(client, keys, version)
    mine = keys.members(version, USERS.segment)
    users = sorted(id_of(key) for key in owned if key.startswith(mine))
    return users[:count]


def redis_cli_example(url: str, prefix: str | None = None, user_id: int = 1) -> str:
    """A copy-paste redis-cli command reading a user's row the way apps do (password masked)."""
    keys = Keys(prefix or get_settings().redis_prefix)
    cli = f"{redis_binary('redis-cli')} -u {masked_url(url)}"
    return f'{cli} GET "{keys.root}:$({cli} GET "{keys.current}"):u:{user_id}"'


def _read_shard(
    lake: Lake, batch: str, shard: int, shards: int, columns: Sequence[str] = USER_COLUMNS
) -> pa.Table:
    """`columns` of one shard file of the batch's recs (others are not read)."""
    path = lake.path(tables.RECS.path, {"batch": batch, "shard": shard_key(shard, shards)}, "part")
    if not lake.fs.exists(path):
        raise DataNotFound(f"{path} does not exist; score shard {shard} of {shards} first")
    with lake.fs.open(path, "rb") as handle:
        present = pq.read_schema(handle).names
        handle.seek(0)
        wanted = [c for c in columns if c in present]
        return pq.read_table(handle, columns=wanted, read_dictionary=["source", "reason_code"])


def _served_policies(interval_end: datetime, settings: Settings) -> dict[str, str]:
    """Each experiment label the batch serves, with its policy, for the version's meta record."""
    experiments = plan_allocation(interval_end, settings)
    return {arm.label: arm.policy for slot in experiments.slots for arm in slot.arms}


def _batch_shards(lake: Lake, batch: str) -> int:
    """The shard count of the batch's recs files, once all of them are there."""
    found = [
        _SHARD_DIR.search(path)
        for path in lake.files(tables.RECS.path, f"batch={batch}/*/part.parquet")
    ]
    keys = {(int(m.group(1)), int(m.group(2))) for m in found if m}
    counts = {shards for _, shards in keys}
    if len(counts) != 1:
        raise DataNotFound(
            f"batch {batch} has no single set of {tables.RECS.path} shard files: {sorted(keys)}"
        )
    shards = counts.pop()
    if len(keys) != shards:
        raise DataNotFound(
            f"batch {batch} has {len(keys)} of its {shards} {tables.RECS.path} shard files"
        )
    return shards


def _batch_similar(lake: Lake, batch: str) -> pd.DataFrame | None:
    """The batch's more_like_this table, or None when the batch has none (no embeddings)."""
    if not lake.exists(tables.MORE_LIKE_THIS.path, {"batch": batch}, "part"):
        log.info(
            "batch %s has no %s table; publishing no similar items",
            batch,
            tables.MORE_LIKE_THIS.path,
        )
        return None
    return lake.read(tables.MORE_LIKE_THIS.path, {"batch": batch}, "part")


def _models_used(
    lake: Lake, batch: str, shards: int, fallback: pd.DataFrame, similar: pd.DataFrame | None
) -> dict[str, Any]:
    """The models behind the table: the score plan's, else the sources found in the tables."""
    try:
        report = json.loads(lake.read_json(tables.SCORE_PLANS, batch))
    except DataNotFound:
        report = {}
    except ValueError as exc:
        raise PublishError(f"{tables.SCORE_PLANS}/{batch}.json is not valid JSON: {exc}") from None
    models = report.get("models") if isinstance(report, dict) else None
    if models is not None and not isinstance(models, dict):
        raise PublishError(
            f"{tables.SCORE_PLANS}/{batch}.json: models must be an object, not {models!r}"
        )
    if models:
        return models
    log.warning(
        "%s/%s.json is missing or names no models; the meta record names the table's sources "
        "instead (re-run scoring for the batch to record the model versions)",
        tables.SCORE_PLANS,
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
