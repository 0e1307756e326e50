"""Sharded scoring: one shard and many give the same table, and a failed shard leaves nothing behind.

The small world goes through the real nightly steps once (ingest to a registered champion ALS and
reranker); each test then scores copies of it with different shard counts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inbo import tables
from inbo.errors import DataNotFound
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from pipelines import score
from pipelines.score import (
    prepare_scoring,
    read_recs_table,
    score_shard,
    score_users,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(
    world_template: Path, world_end: datetime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The small world with tonight's features, models and a champion ALS and reranker."""
    from features.embeddings import build_embeddings
    from features.interactions import build_interactions
    from pipelines import registry
    from pipelines.ingest import ingest
    from pipelines.train import fit_baselines, train_als, train_reranker
    from pipelines.validate import validate_batch

    var_dir = tmp_path_factory.mktemp("sharding") / "var"
    shutil.copytree(world_template, var_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INBO_VAR_DIR", str(var_dir))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        settings = get_settings()
        ingest(world_end)
        validate_batch(world_end)
        build_interactions(world_end)
        build_embeddings(world_end)
        fit_baselines(world_end)
        batch = batch_key(world_end)
        for kind, trained_model in (
            ("als", train_als(world_end)),
            ("reranker", train_reranker(world_end)),
        ):
            assert trained_model.run_id, f"the small world trains no {kind}"
            version = registry.register(
                settings, kind, trained_model.run_id, Path(trained_model.directory), batch
            )
            registry.promote(settings, kind, version)
    get_settings.cache_clear()
    yield var_dir


@pytest.fixture
def scored_world(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A private copy of the trained world (MLflow's DB included) for one test to score."""
    var_dir = tmp_path / "var"
    shutil.copytree(trained, var_dir)
    monkeypatch.setenv("INBO_VAR_DIR", str(var_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    return get_settings()


def unsharded_reference(settings: Settings, end: datetime) -> pd.DataFrame:
    """The table as scoring computed it before sharding: every user at once on the full data."""
    from models.candidates import CandidateModels
    from models.hybrid import propose, rank
    from pipelines.score import champion_parts
    from pipelines.training_data import load_training_data

    data = load_training_data(settings, end)
    als, reranker, _ = champion_parts(settings)
    assert reranker is not None
    sources = CandidateModels.load(settings.model_dir(batch_key(end)), als=als)
    interactions = data.interactions
    users = np.sort(interactions.loc[interactions["weight"] > 0, "user_id"].unique())
    trending = sources.popularity.global_top(settings.fallback_n)
    trending = trending.assign(rank=np.arange(1, len(trending) + 1))
    candidates = propose(sources, data, users, settings.candidates_per_source)
    recs = rank(candidates, reranker, data, settings.top_n, trending)
    return recs.sort_values(["user_id", "rank"], ignore_index=True)


def scored_with(settings: Settings, end: datetime, shards: int) -> pd.DataFrame:
    plan = prepare_scoring(end, settings, shards=shards)
    for shard in range(plan.shards):
        score_shard(end, shard, plan.shards, settings)
    return read_recs_table(end, settings)


def test_one_shard_and_many_shards_give_the_same_table(
    scored_world: Settings, world_end: datetime
) -> None:
    one = score_users(world_end, scored_world)
    assert one.shards == 1 and one.users > 100
    single = read_recs_table(world_end, scored_world)
    assert len(single) == one.rows and single["user_id"].nunique() == one.users

    pd.testing.assert_frame_equal(single, unsharded_reference(scored_world, world_end))
    for shards in (3, 7):
        pd.testing.assert_frame_equal(scored_with(scored_world, world_end, shards), single)


def test_each_shard_holds_only_its_users(scored_world: Settings, world_end: datetime) -> None:
    scored_with(scored_world, world_end, 4)
    lake = Lake(scored_world.lake)
    batch = batch_key(world_end)
    for shard in range(4):
        part = {"batch": batch, "shard": f"{shard:03d}of004"}
        users = lake.read(tables.RECS.path, part, "part")["user_id"]
        assert len(users) and (users % 4 == shard).all()


def test_a_failed_shard_leaves_no_file_and_its_retry_completes_the_table(
    scored_world: Settings, world_end: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = scored_with(scored_world, world_end, 3)
    plan = prepare_scoring(world_end, scored_world, shards=3)
    score_shard(world_end, 0, 3, scored_world)

    real_rank = score.rank

    def dies_mid_shard(*args: object, **kwargs: object) -> pd.DataFrame:
        real_rank(*args, **kwargs)  # type: ignore[arg-type]
        raise MemoryError("the worker was killed")

    with monkeypatch.context() as patch:
        patch.setattr(score, "rank", dies_mid_shard)
        with pytest.raises(MemoryError):
            score_shard(world_end, 1, plan.shards, scored_world)
    with pytest.raises(DataNotFound, match="not fully scored"):
        read_recs_table(world_end, scored_world)

    for shard in (1, 2, 2):  # the retry, then a shard run twice: it overwrites its one file
        score_shard(world_end, shard, plan.shards, scored_world)
    pd.testing.assert_frame_equal(read_recs_table(world_end, scored_world), expected)
    files = Lake(scored_world.lake).files(
        tables.RECS.path, f"batch={batch_key(world_end)}/**/*.parquet"
    )
    assert len(files) == 3


def test_replanning_with_another_shard_count_drops_the_old_shards(
    scored_world: Settings, world_end: datetime
) -> None:
    expected = scored_with(scored_world, world_end, 5)
    again = scored_with(scored_world, world_end, 2)
    pd.testing.assert_frame_equal(again, expected)
    files = Lake(scored_world.lake).files(
        tables.RECS.path, f"batch={batch_key(world_end)}/**/*.parquet"
    )
    assert [Path(f).parent.name for f in files] == ["shard=000of002", "shard=001of002"]


def test_a_shard_of_another_plan_is_refused(scored_world: Settings, world_end: datetime) -> None:
    prepare_scoring(world_end, scored_world, shards=2)
    with pytest.raises(ValueError, match="planned with 2 shards"):
        score_shard(world_end, 0, 3, scored_world)


def test_a_shard_that_dies_midway_blocks_the_switch_until_its_retry(
    scored_world: Settings, world_end: datetime, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scored and published in 3 shards; shard 1 dies after half its keys: no pointer switch, and
    its retry leaves exactly one key per user, the same table as the lake's."""
    from inbo.errors import PublishError
    from inbo.services import redis_client
    from pipelines.publish import steps as publish
    from pipelines.publish import versions
    from pipelines.publish.contract import Keys

    monkeypatch.setenv("INBO_REDIS_URL", redis_server)
    monkeypatch.setenv("INBO_PUBLISH_BATCH_SIZE", "25")
    get_settings.cache_clear()
    settings = get_settings()
    recs = scored_with(settings, world_end, 3)
    client = redis_client(settings)
    keys = Keys(settings.redis_prefix)
    previous = publish.publish_batch(world_end, settings)  # a live table readers are on
    publish.verify_version(world_end, previous, settings)
    publish.activate_version(previous, settings)

    version = publish.begin_publish(world_end, 3, settings)
    publish.publish_shard(world_end, version, 0, 3, settings)
    real_stage = versions.stage

    def dies_midway(client: object, names: list[str], values: list[str], *args: object) -> None:
        half = len(names) // 2
        real_stage(client, names[:half], values[:half], *args)  # type: ignore[arg-type]
        raise ConnectionError("the worker lost Redis")

    with monkeypatch.context() as patch:
        patch.setattr(versions, "stage", dies_midway)
        with pytest.raises(ConnectionError):
            publish.publish_shard(world_end, version, 1, 3, settings)
    publish.publish_shard(world_end, version, 2, 3, settings)
    with pytest.raises(PublishError):
        publish.verify_version(world_end, version, settings)
    assert client.get(keys.current) == previous

    assert publish.publish_shard(world_end, version, 1, 3, settings).users > 0  # the retry
    publish.verify_version(world_end, version, settings)
    publish.activate_version(version, settings)
    assert client.get(keys.current) == version
    staged = [k for k in client.scan_iter(keys.version_pattern(version, "u:*"), count=1000)]
    assert len(staged) == recs["user_id"].nunique()
    for user_id, rows in list(recs.groupby("user_id"))[:30]:
        answer = publish.read_recs(int(user_id), settings)
        assert answer["personal"] and answer["table_version"] == version
        assert [i["item_id"] for i in answer["items"]] == rows["item_id"].tolist()


def test_the_simulators_activity_scales_the_interactions(
    tmp_path: Path, world_end: datetime
) -> None:
    """`activity` makes the big, mostly idle audiences of the scale benchmark; 1.0 is the demo."""
    from pipelines.demo.simulate import simulate

    def interactions(activity: float) -> int:
        db = f"sqlite:///{tmp_path / f'a{activity}.db'}"
        return simulate(
            db, users=400, items=60, days=3, seed=5, end=world_end.replace(tzinfo=None),
            truth_dir=tmp_path / f"truth{activity}", activity=activity,
        ).experience_interactions  # fmt: skip

    full, tenth = interactions(1.0), interactions(0.1)
    assert 0.05 < tenth / full < 0.2, (tenth, full)


def test_writers_split_the_shards_between_them_and_stage_each_once(
    scored_world: Settings, world_end: datetime, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two publish writers over five score shards: every shard staged by exactly one writer, and
    the version verifies with every user once."""
    from inbo.services import redis_client
    from inbo.shards import writer_shards
    from pipelines.publish import steps as publish
    from pipelines.publish.contract import Keys

    assert [writer_shards(w, 2, 5) for w in range(2)] == [[0, 2, 4], [1, 3]]
    assert writer_shards(3, 4, 2) == []  # more writers than shards: the extra one has nothing
    with pytest.raises(ValueError, match=r"writer 2 is not in 0\.\.1"):
        writer_shards(2, 2, 5)

    monkeypatch.setenv("INBO_REDIS_URL", redis_server)
    get_settings.cache_clear()
    settings = get_settings()
    recs = scored_with(settings, world_end, 5)
    version = publish.begin_publish(world_end, 5, settings)
    reports = [publish.publish_shards(world_end, version, w, 2, 5, settings) for w in range(2)]
    assert [[r.shard for r in mine] for mine in reports] == [[0, 2, 4], [1, 3]]
    staged = [sum(r.users for r in mine) for mine in reports]
    assert sum(staged) == recs["user_id"].nunique()
    assert staged[0] == recs.loc[recs["user_id"] % 5 % 2 == 0, "user_id"].nunique()
    publish.verify_version(world_end, version, settings)
    keys = Keys(settings.redis_prefix)
    recorded = redis_client(settings).hgetall(keys.shards(version))
    assert sorted(map(int, recorded)) == [0, 1, 2, 3, 4]
    compactions: list[Settings] = []
    monkeypatch.setattr(publish, "compact", compactions.append)
    publish.activate_version(version, settings)
    assert compactions == [settings]  # the log is compacted once the table is live
