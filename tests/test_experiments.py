"""Experiments: the config's checks, the assignment hash and its layout, variants in the table.

The golden vectors were computed outside Python, with coreutils:
`printf '%s' 'rvp-2026-12:42' | sha256sum` -> 4a6a03dc5b8797cb..., 0x4a6a03dc5b8797cb % 10000 = 8123,
so a Node or Go app that follows docs/experiments.md lands every user in the same bucket.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from inbo.errors import ConfigError
from inbo.reasons import REASONS
from inbo.settings import Settings
from pipelines.experiments.assignment import allocation, bucket, buckets
from pipelines.experiments.config import ExperimentsFile, load_experiments
from pipelines.experiments.lifecycle import start_experiment, stop_experiment, table_allocation
from pipelines.publish.contract import schema_validator
from pipelines.publish.packing import VARIANT, as_table, pack, ranked_lists

GOLDEN = [
    ("rvp-2026-12", 1, 368),
    ("rvp-2026-12", 42, 8123),
    ("rvp-2026-12", 1_000_000, 4914),
    ("layer:feed-ranking", 7, 2280),
    ("inbo-global-holdout", 123456, 9746),
]


def experiment(name: str = "exp", **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": name,
        "salt": f"{name}-salt",
        "control": "a",
        "variants": [
            {"name": "a", "weight": 1, "policy": {"kind": "popularity"}},
            {"name": "b", "weight": 1, "policy": {"kind": "champion"}},
        ],
        "minimum_detectable_effect": 0.1,
        "planned_days": 7,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(("salt", "user_id", "expected"), GOLDEN)
def test_bucket_matches_the_golden_vectors(salt: str, user_id: int, expected: int) -> None:
    assert bucket(salt, user_id) == expected
    assert buckets(salt, np.array([user_id]))[0] == expected


def test_assignment_is_deterministic_balanced_and_exclusive_within_a_layer() -> None:
    config = ExperimentsFile.model_validate(
        {"experiments": [experiment("one", traffic=0.5), experiment("two", traffic=0.5)]}
    )
    layout = allocation(config, ["one", "two"], "feed-ranking")
    users = np.arange(1, 40_001)
    labels, policies = layout.assign(users)
    again, _ = layout.assign(users[::-1])
    assert (labels == again[::-1]).all()  # the same user lands in the same variant, in any order
    counts = pd.Series(labels).value_counts()
    assert set(counts.index) == {"one/a", "one/b", "two/a", "two/b"}  # nobody is in both
    # 10,000 users expected per arm; a binomial sd is ~87, so 4 sd is ~350
    assert (abs(counts - 10_000) < 350).all()
    assert set(policies[labels == "one/a"]) == {"popularity"}
    # a user added later is placed by the same function, and earlier users do not move
    more, _ = layout.assign(np.arange(1, 50_001))
    assert (more[:40_000] == labels).all()


def test_stopping_one_experiment_does_not_move_the_users_of_another() -> None:
    config = ExperimentsFile.model_validate(
        {"experiments": [experiment("one", traffic=0.3), experiment("two", traffic=0.3)]}
    )
    users = np.arange(1, 20_001)
    both, _ = allocation(config, ["one", "two"], "feed-ranking").assign(users)
    alone, _ = allocation(config, ["two"], "feed-ranking").assign(users)
    in_two = np.array([str(label).startswith("two/") for label in both])
    assert (alone[in_two] == both[in_two]).all()
    assert all(label is None for label in alone[~in_two])


def test_the_holdout_takes_its_share_out_of_every_experiment() -> None:
    config = ExperimentsFile.model_validate(
        {"holdout": {"share": 0.1, "salt": "h"}, "experiments": [experiment()]}
    )
    labels, policies = allocation(config, ["exp"], "feed-ranking").assign(np.arange(1, 20_001))
    held = labels == "holdout"
    assert abs(held.mean() - 0.1) < 0.01  # binomial sd of the share at 20k users: 0.002
    assert set(policies[held]) == {"champion"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"control": "c"}, "control"),
        ({"variants": [{"name": "a", "weight": 1, "policy": {"kind": "champion"}}]}, "at least 2"),
        ({"name": "Bad Name"}, "must be 1-40"),
        ({"primary_metric": "reads_per_user"}, "also listed"),
    ],
)
def test_the_config_refuses_incoherent_experiments(
    change: dict[str, object], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "experiments.yml"
    path.write_text(json.dumps({"experiments": [experiment(**change)]}))
    with pytest.raises(ConfigError, match=message):
        load_experiments(path)


def test_an_oversubscribed_layer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yml"
    path.write_text(
        json.dumps(
            {"experiments": [experiment("one", traffic=0.7), experiment("two", traffic=0.7)]}
        )
    )
    with pytest.raises(ConfigError, match="oversubscribed"):
        load_experiments(path)


def test_the_repo_experiments_file_is_valid() -> None:
    config = load_experiments(Settings().experiments_file)
    assert config.get("ranker-vs-popularity").minimum_detectable_effect == 0.2


def test_a_started_experiment_serves_from_its_start_until_it_stops(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "experiments.yml"
    path.write_text(json.dumps({"experiments": [experiment()]}))
    configured = settings.model_copy(update={"experiments_file": path})
    start_experiment("exp", datetime(2026, 11, 1, tzinfo=UTC), {"checked": False}, configured)
    assert table_allocation(configured, datetime(2026, 10, 31, tzinfo=UTC)).slots == ()
    assert [
        s.experiment for s in table_allocation(configured, datetime(2026, 11, 2, tzinfo=UTC)).slots
    ] == ["exp"]
    with pytest.raises(ConfigError, match="already running"):
        start_experiment("exp", datetime(2026, 11, 3, tzinfo=UTC), {}, configured)
    stop_experiment("exp", datetime(2026, 11, 5, tzinfo=UTC), configured)
    assert table_allocation(configured, datetime(2026, 11, 6, tzinfo=UTC)).slots == ()


def test_payloads_carry_the_variant_and_validate_against_the_schema() -> None:
    rows = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "rank": [1, 2, 1],
            "item_id": [10, 11, 12],
            "source": ["popularity"] * 3,
            "reason_code": ["trending"] * 3,
            "reason_ref": [None, None, None],
            VARIANT: ["exp/a", "exp/a", None],
        }
    )
    table = as_table(
        rows, ["user_id", "rank", "item_id", "source", "reason_code", "reason_ref"], "recs"
    )
    payloads = [
        json.loads(p) for p in pack(ranked_lists(table, REASONS, "recs"), "2026-11-20T02:00:00Z")
    ]
    assert payloads[0]["variant"] == "exp/a" and "variant" not in payloads[1]
    for payload in payloads:
        schema_validator().validate(payload)


def test_a_variant_label_that_would_need_escaping_is_refused() -> None:
    from inbo.errors import PublishError

    rows = pa.table(
        {
            "user_id": [1],
            "rank": [1],
            "item_id": [10],
            "source": ["popularity"],
            "reason_code": ["trending"],
            "reason_ref": pa.array([None], pa.int64()),
            VARIANT: ['x","items":[1]'],
        }
    )
    with pytest.raises(PublishError, match="variant label"):
        ranked_lists(as_table(rows, rows.column_names[:-1], "recs"), REASONS, "recs")


def test_each_user_reads_back_the_variant_the_plan_placed_them_in(
    redis_server: str, tmp_path: Path
) -> None:
    """Published through the real steps into the session's Redis, read back as a frontend does."""
    from inbo import tables
    from inbo.lake import Lake
    from inbo.schemas import RECOMMENDATIONS
    from inbo.services import redis_client
    from inbo.shards import shard_key, user_shard
    from pipelines.offline.synthetic import make_fallback, make_recs
    from pipelines.publish.lifecycle import live_meta
    from pipelines.publish.steps import (
        activate_version,
        begin_publish,
        publish_shard,
        read_recs,
        verify_version,
    )

    end, batch = datetime(2026, 11, 26, tzinfo=UTC), "20261126T0000Z"
    settings = Settings(var_dir=tmp_path, redis_url=redis_server, redis_prefix="exp-publish")
    lake = Lake(settings.lake)
    recs = make_recs(users=40, per_user=3)
    for shard in range(2):
        rows = recs[user_shard(recs["user_id"].to_numpy(), 2) == shard]
        lake.write(
            rows,
            tables.RECS.path,
            "part",
            {"batch": batch, "shard": shard_key(shard, 2)},
            RECOMMENDATIONS,
        )
    lake.write(make_fallback(), tables.RECS_FALLBACK.path, "part", {"batch": batch})
    config = ExperimentsFile.model_validate({"experiments": [experiment(traffic=0.6)]})
    layout = allocation(config, ["exp"], "feed-ranking")
    plan = {
        "batch": batch,
        "shards": 2,
        "users": 40,
        "fallback_items": 5,
        "experiments": layout.to_json(),
    }
    lake.write_json(json.dumps(plan), tables.SCORE_PLANS, batch)

    version = begin_publish(end, 2, settings=settings)
    for shard in range(2):
        publish_shard(end, version, shard, 2, settings=settings)
    activate_version(verify_version(end, version, settings=settings), settings=settings)

    users = np.sort(recs["user_id"].unique())
    expected, _ = layout.assign(users)
    read = [read_recs(int(u), settings=settings)["variant"] for u in users]
    assert read == list(expected)
    assert {"exp/a", "exp/b", None} == set(read)  # 60% traffic: some users are in no experiment
    meta = live_meta(redis_client(settings), settings.redis_prefix)
    assert meta["experiments"] == {"exp/a": "popularity", "exp/b": "champion"}
    assert meta["contract_revision"] == "2.1"


def test_exposure_counts_only_the_experiments_slots_and_everything_else_the_user_did() -> None:
    from pipelines.experiments.exposure import exposed_users, pre_period_counts, with_pre_period

    ts = pd.Timestamp("2026-11-21T10:00", tz="UTC")
    events = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2, 2, 3],
            "event_type": [
                "impression",
                "click",
                "impression",
                "read",
                "impression",
                "dismiss",
                "impression",
            ],
            "ts": [ts] * 7,
            "rec_variant": ["e/a", "e/a", None, None, "e/b", None, "other/a"],
        }
    )
    users = exposed_users(events, "e").set_index("user_id")
    assert list(users.index) == [1, 2]  # user 3 saw another experiment only
    assert users.loc[1, "variant"] == "a" and users.loc[2, "variant"] == "b"
    # the unlabelled impression is not the list's slot; the read counts wherever it happened
    assert users.loc[1, ["impressions", "clicks", "reads"]].tolist() == [1, 1, 1]
    assert users.loc[2, "dismissals"] == 1
    before = events.assign(rec_variant=None).iloc[:2]
    joined = with_pre_period(users.reset_index(), pre_period_counts(before)).set_index("user_id")
    assert joined.loc[1, "pre_impressions"] == 1 and joined.loc[2, "pre_impressions"] == 0


def test_the_popularity_policy_serves_the_trending_list_minus_what_the_user_read() -> None:
    from models.hybrid import popular_only

    trending = pd.DataFrame(
        {
            "item_id": [10, 11, 12, 13],
            "score": [1.0, 0.8, 0.5, 0.2],
            "source": "popularity",
            "reason_code": "trending",
            "reason_ref": pd.array([pd.NA] * 4, dtype="Int64"),
            "rank": [1, 2, 3, 4],
        }
    )
    seen = pd.DataFrame({"user_id": [2], "item_id": [11]})
    lists = popular_only(np.array([1, 2]), trending, seen, n=3)
    assert lists[lists.user_id == 1].item_id.tolist() == [10, 11, 12]
    assert lists[lists.user_id == 2].item_id.tolist() == [10, 12, 13]
    assert lists.groupby("user_id")["rank"].apply(list).tolist() == [[1, 2, 3]] * 2


def test_start_refuses_an_experiment_too_small_to_see_its_effect(
    settings: Settings, tmp_path: Path
) -> None:
    """600 users with 20 impressions at 5% CTR in the week. By hand: per-user CTR sd
    sqrt(0.05 * 0.95 / 20) = 0.049, se of the difference at 300 per arm 0.049 * sqrt(2 / 300) =
    0.0040, times z(0.975) + z(0.8) = 2.80 gives 0.011, a 22% lift: 5% is refused, 50% is not."""
    from inbo import schemas, tables
    from inbo.lake import Lake
    from pipelines.experiments.power import power_check

    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(1, 601), 20)
    clicked = rng.random(len(users)) < 0.05
    kinds = np.r_[np.full(len(users), "impression"), np.full(int(clicked.sum()), "click")]
    ids = np.r_[users, users[clicked]]
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(ids))],
            "user_id": ids,
            "item_id": 1,
            "event_type": kinds,
            "ts": pd.Timestamp("2026-11-18T12:00", tz="UTC"),
        }
    ).reindex(columns=schemas.USER_EVENTS.names)
    Lake(settings.lake).write(
        events, tables.USER_EVENTS.path, "part", {"date": "2026-11-18"}, schemas.USER_EVENTS
    )
    at = datetime(2026, 11, 20, tzinfo=UTC)
    small = ExperimentsFile.model_validate(
        {"experiments": [experiment(minimum_detectable_effect=0.05)]}
    )
    with pytest.raises(ConfigError, match="cannot reach its minimum detectable effect"):
        power_check(small.get("exp"), at, settings)
    big = ExperimentsFile.model_validate(
        {"experiments": [experiment(minimum_detectable_effect=0.5)]}
    )
    report = power_check(big.get("exp"), at, settings)
    assert report["users_expected"] == 600
    assert 0.1 < float(report["detectable_lift"]) < 0.35  # type: ignore[arg-type]
