"""Reranker: features that cannot see the future, hand-checked values, a planted signal, the demo world."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.ranking import (
    CTR_PRIOR_IMPRESSIONS,
    ENGAGED_EVENTS,
    FEATURES,
    LABEL,
    POSITIVE_EVENTS,
    CandidatesFn,
    catalogue_item_features,
    history,
    impression_labels,
    ranking_features,
    training_examples,
    training_users,
    utc,
)
from inbo import schemas
from inbo.errors import NoPositiveExamples, NotFitted
from inbo.settings import Settings
from models.reranker import BIAS, Reranker

log = logging.getLogger(__name__)

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# -- helpers -------------------------------------------------------------------------------------


def make_events(rows: Iterable[tuple]) -> pd.DataFrame:
    """Canonical events from (user_id, item_id, event_type, ts[, read_fraction]) tuples."""
    records = [
        {
            "event_id": f"e{number}",
            "user_id": row[0],
            "item_id": row[1],
            "event_type": row[2],
            "ts": row[3],
            "read_fraction": row[4] if len(row) > 4 else None,
        }
        for number, row in enumerate(rows)
    ]
    frame = pd.DataFrame(records, columns=["event_id", "user_id", "item_id", "event_type", "ts"])
    frame["read_fraction"] = [record["read_fraction"] for record in records]
    for column in schemas.USER_EVENTS.names:
        if column not in frame:
            frame[column] = None
    return schemas.conform(frame, schemas.USER_EVENTS)


def make_items(rows: Iterable[tuple[int, int, str, datetime]]) -> pd.DataFrame:
    """Catalogue from (item_id, publisher_id, category, published_at)."""
    frame = pd.DataFrame(rows, columns=["item_id", "publisher_id", "category", "published_at"])
    frame = frame.assign(
        publisher="p" + frame["publisher_id"].astype(str),
        title="t",
        description=None,
        tags=[[] for _ in range(len(frame))],
        language="en",
    )
    return schemas.conform(frame, schemas.ITEMS)


def make_subscriptions(rows: Iterable[tuple[int, int, datetime, datetime | None]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["user_id", "publisher_id", "subscribed_at", "unsubscribed_at"]
    )
    return schemas.conform(frame, schemas.SUBSCRIPTIONS)


def ndcg_at_k(frame: pd.DataFrame, score: str, k: int = 10) -> float:
    """Mean over users of graded nDCG@k (gain 2^label - 1) of `frame` ordered by `score`."""
    ordered = frame.sort_values(["user_id", score, "item_id"], ascending=[True, False, True])
    gain = np.exp2(ordered[LABEL].to_numpy(dtype=float)) - 1
    position = ordered.groupby("user_id").cumcount().to_numpy()
    discount = np.where(position < k, 1 / np.log2(position + 2), 0.0)
    dcg = pd.Series(gain * discount).groupby(ordered["user_id"].to_numpy()).sum()
    ideal = (
        pd.DataFrame({"user_id": ordered["user_id"].to_numpy(), "gain": gain})
        .sort_values(["user_id", "gain"], ascending=[True, False])
        .assign(position=lambda f: f.groupby("user_id").cumcount())
    )
    ideal_dcg = (
        (ideal["gain"] * np.where(ideal["position"] < k, 1 / np.log2(ideal["position"] + 2), 0))
        .groupby(ideal["user_id"])
        .sum()
    )
    return float((dcg / ideal_dcg).mean())


def test_ndcg_helper_limits_and_a_hand_value() -> None:
    frame = pd.DataFrame(
        {"user_id": [1, 1, 1], "item_id": [1, 2, 3], LABEL: [0, 1, 2], "best": [0, 1, 2]}
    )
    assert ndcg_at_k(frame, "best") == pytest.approx(1.0)
    frame["worst"] = -frame["best"]
    worst = (1 / np.log2(3) + 3 / np.log2(4)) / (3 + 1 / np.log2(3))
    assert ndcg_at_k(frame, "worst") == pytest.approx(worst)
    assert ndcg_at_k(frame, "worst", k=1) == pytest.approx(0.0)


# -- no leakage ----------------------------------------------------------------------------------

CUTOFF = AS_OF - 2 * DAY
ITEMS = make_items(
    [
        (1, 100, "sport", CUTOFF - 3 * DAY),
        (2, 200, "food", CUTOFF - 2 * DAY),
        (3, 100, "sport", CUTOFF - 1 * DAY),
    ]
)
SUBSCRIPTIONS = make_subscriptions([(1, 100, CUTOFF - 5 * DAY, None), (2, 200, CUTOFF, None)])


def pre_cutoff_events() -> list[tuple]:
    """Five days before the cutoff: users 1-3 see items 1-3 daily, each clicks and reads one."""
    rows: list[tuple] = []
    for user in (1, 2, 3):
        for item in (1, 2, 3):
            for day in range(1, 6):
                rows.append((user, item, "impression", CUTOFF - day * DAY + user * HOUR))
        rows.append((user, user, "click", CUTOFF - 2 * DAY))
        rows.append((user, user, "read", CUTOFF - 2 * DAY + HOUR, 0.3 * user))
    return rows


def label_window_events() -> list[tuple]:
    """After the cutoff: users 1 and 2 are shown items 1-3; user 1 reads item 1, user 2 clicks 2."""
    rows = [(user, item, "impression", CUTOFF + HOUR) for user in (1, 2) for item in (1, 2, 3)]
    return [
        *rows,
        (1, 1, "click", CUTOFF + 2 * HOUR),
        (1, 1, "read", CUTOFF + 3 * HOUR, 0.9),
        (2, 2, "click", CUTOFF + 2 * HOUR),
    ]


def click_burst(item: int, start: datetime) -> list[tuple]:
    """300 impressions and clicks on `item` from `start` on, by users never shown anything else."""
    second = timedelta(seconds=1)
    return [
        row
        for n, user in enumerate(range(1000, 1300))
        for row in (
            (user, item, "impression", start + n * second),
            (user, item, "click", start + (n + 1) * second),
        )
    ]


def candidates() -> pd.DataFrame:
    pairs = pd.MultiIndex.from_product([[1, 2, 3], [1, 2, 3]], names=["user_id", "item_id"])
    return pd.DataFrame(index=pairs).reset_index().assign(popularity_score=0.5)


def test_ranking_features_do_not_see_a_burst_at_or_after_the_cutoff() -> None:
    clean = make_events(pre_cutoff_events())
    burst = make_events([*pre_cutoff_events(), *click_burst(1, CUTOFF)])
    before = ranking_features(candidates(), clean, ITEMS, SUBSCRIPTIONS, CUTOFF)
    after = ranking_features(candidates(), burst, ITEMS, SUBSCRIPTIONS, CUTOFF)
    pd.testing.assert_frame_equal(before, after)
    assert not before["subscribed"][before["user_id"] == 2].any()  # subscribed_at == cutoff
    # And the check has teeth: the same burst two hours before the cutoff shows in the features.
    early = make_events([*pre_cutoff_events(), *click_burst(1, CUTOFF - 2 * HOUR)])
    seen = ranking_features(candidates(), early, ITEMS, SUBSCRIPTIONS, CUTOFF)
    item_1 = seen["item_id"] == 1
    assert (seen.loc[item_1, "item_clicks_1d"] > before.loc[item_1, "item_clicks_1d"] + 250).all()
    assert (seen.loc[item_1, "item_ctr_1d"] > before.loc[item_1, "item_ctr_1d"]).all()


def test_training_features_use_only_pre_cutoff_events() -> None:
    rows = [*pre_cutoff_events(), *label_window_events()]
    base = training_examples(
        make_events(rows), ITEMS, SUBSCRIPTIONS, lambda _: candidates(), CUTOFF
    )
    assert set(base["user_id"]) == {1, 2}
    labels = base.set_index(["user_id", "item_id"])[LABEL]
    assert labels.to_dict() == {(1, 1): 2, (1, 2): 0, (1, 3): 0, (2, 1): 0, (2, 2): 1, (2, 3): 0}
    future = [*click_burst(3, CUTOFF), *click_burst(2, CUTOFF + 3 * DAY)]
    future.append((1, 3, "click", CUTOFF + 5 * HOUR))  # changes a label, must not change features
    perturbed = training_examples(
        make_events(rows + future), ITEMS, SUBSCRIPTIONS, lambda _: candidates(), CUTOFF
    )
    assert perturbed["user_id"].nunique() > 100  # the burst's users were shown item 3 and clicked
    same_users = perturbed[perturbed["user_id"].isin([1, 2])].reset_index(drop=True)
    pd.testing.assert_frame_equal(base.drop(columns=LABEL), same_users.drop(columns=LABEL))
    changed = (same_users[LABEL] != base[LABEL]).to_numpy()
    assert same_users.loc[changed, ["user_id", "item_id"]].values.tolist() == [[1, 3]]


# -- hand-checked values -------------------------------------------------------------------------


def tiny_world() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    items = make_items(
        [
            (1, 100, "sport", AS_OF - 30 * HOUR),
            (2, 200, "food", AS_OF - 3 * DAY),
            (3, 300, "sport", AS_OF - 10 * DAY),
        ]
    )
    last_day = AS_OF - 12 * HOUR
    rows: list[tuple] = [(99, 1, "impression", last_day)] * 10
    rows += [(99, 2, "impression", last_day)] * 30
    rows += [(99, 1, "click", last_day)] * 2 + [(99, 2, "click", last_day)]
    rows += [(99, 1, "read", last_day, 0.2)]
    week = AS_OF - 5 * DAY
    rows += [(1, 1, "click", week), (1, 1, "click", week), (1, 3, "click", week)]
    rows += [(1, 2, "read", week, 0.8), (1, 2, "dismiss", week)]
    subscriptions = make_subscriptions(
        [
            (1, 100, AS_OF - 10 * DAY, AS_OF - DAY),  # ended before as_of
            (1, 200, AS_OF - 10 * DAY, AS_OF + DAY),  # ends later: still subscribed at as_of
            (1, 300, AS_OF + HOUR, None),  # not yet
            (2, 100, AS_OF - 10 * DAY, None),
        ]
    )
    return make_events(rows), items, subscriptions


def test_hand_checked_feature_values() -> None:
    events, items, subscriptions = tiny_world()
    pairs = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 1]})
    got = ranking_features(pairs, events, items, subscriptions, AS_OF)
    prior = 3 / 40  # the last day's global CTR: 3 clicks over 40 impressions
    ctr = [(2 + 20 * prior) / (10 + 20), (1 + 20 * prior) / (30 + 20), prior, 3.5 / 30]
    assert CTR_PRIOR_IMPRESSIONS == 20
    assert got["item_ctr_1d"].tolist() == pytest.approx(ctr)
    assert got["item_clicks_1d"].tolist() == [2, 1, 0, 2]
    assert got["item_clicks_7d"].tolist() == [4, 1, 1, 4]
    assert got["item_age_hours"].tolist() == pytest.approx([30, 72, 240, 30])
    assert got["is_fresh"].tolist() == [1, 1, 0, 1]
    assert got["subscribed"].tolist() == [0, 1, 0, 1]
    assert "dismiss" not in POSITIVE_EVENTS
    assert got["user_category_affinity"].tolist() == pytest.approx([0.75, 0.25, 0.75, 0])
    assert got["user_publisher_affinity"].tolist() == pytest.approx([0.5, 0.25, 0.25, 0])
    read_through = [(0.2 + 5 * 0.5) / 6, (0.8 + 5 * 0.5) / 6, 0.5, (0.2 + 5 * 0.5) / 6]
    assert got["item_read_through_30d"].tolist() == pytest.approx(read_through)
    assert got["n_sources"].tolist() == [0, 0, 0, 0]
    assert got[["user_id", "item_id"]].equals(pairs)


def test_a_rows_features_do_not_depend_on_the_other_candidates() -> None:
    events, items, subscriptions = tiny_world()
    pairs = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 1]})
    everyone = ranking_features(pairs, events, items, subscriptions, AS_OF)
    alone = ranking_features(pairs.iloc[[1]], events, items, subscriptions, AS_OF)
    pd.testing.assert_frame_equal(alone, everyone.iloc[[1]].reset_index(drop=True))


def test_labels_follow_the_impression_and_skip_unpublished_items() -> None:
    items = make_items([(item, 1, "sport", CUTOFF - DAY) for item in range(1, 5)])
    items = pd.concat([items, make_items([(5, 1, "sport", CUTOFF + HOUR)])], ignore_index=True)
    shown = [(1, item, "impression", CUTOFF + 2 * HOUR) for item in range(1, 6)]
    engaged: list[tuple] = [
        (1, 1, "click", CUTOFF + 3 * HOUR),  # click after impression: 1
        (1, 2, "read", CUTOFF + 3 * HOUR, 0.7),  # read through: 2
        (1, 3, "click", CUTOFF + HOUR),  # click before it was shown here: 0
        (1, 5, "click", CUTOFF + 3 * HOUR),  # published after the cutoff: no row
        (1, 1, "click", CUTOFF + 3 * DAY),  # after the window: ignored
    ]
    labels = impression_labels(make_events(shown + engaged), items, CUTOFF, label_days=2)
    assert labels.values.tolist() == [[1, 1, 1], [1, 2, 2], [1, 3, 0], [1, 4, 0]]
    binary = impression_labels(make_events(shown + engaged), items, CUTOFF, 2, graded=False)
    assert binary[LABEL].tolist() == [1, 1, 0, 0]


# -- the model -----------------------------------------------------------------------------------


def planted_examples(users: int, per_user: int, seed: int) -> pd.DataFrame:
    """Noise features, except that subscribed items get clicked (70%) and others rarely (5%)."""
    rng = np.random.default_rng(seed)
    rows = users * per_user
    frame = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=list(FEATURES))
    frame["als_score"] = frame["als_score"].mask(rng.random(rows) < 0.3)
    frame["subscribed"] = (rng.random(rows) < 0.3).astype(float)
    chance = np.where(frame["subscribed"] == 1, 0.7, 0.05)
    frame[LABEL] = (rng.random(rows) < chance).astype(int)
    frame.insert(0, "user_id", np.repeat(np.arange(users), per_user))
    frame.insert(1, "item_id", np.tile(np.arange(per_user), users))
    return frame


@pytest.fixture(scope="module")
def planted() -> tuple[Reranker, pd.DataFrame]:
    """A reranker fitted on 200 planted users, and 100 held-out users to score."""
    examples = planted_examples(users=300, per_user=20, seed=3)
    held_out = examples["user_id"] >= 200
    model = Reranker(random_state=7).fit(examples[~held_out])
    return model, examples[held_out].reset_index(drop=True)


def test_reranker_finds_the_planted_signal(planted: tuple[Reranker, pd.DataFrame]) -> None:
    model, held_out = planted
    assert model.feature_importance()["feature"].iloc[0] == "subscribed"
    scored = held_out.assign(model=model.score(held_out))
    rng = np.random.default_rng(0)
    shuffles = [ndcg_at_k(scored.assign(r=rng.random(len(scored))), "r", 5) for _ in range(20)]
    learned = ndcg_at_k(scored, "model", 5)
    log.info("planted signal nDCG@5: model %.3f, random %.3f", learned, np.mean(shuffles))
    assert learned > np.mean(shuffles) + 0.3


def test_contributions_sum_to_the_score(planted: tuple[Reranker, pd.DataFrame]) -> None:
    model, held_out = planted
    rows = held_out.head(200)  # TreeSHAP costs about a millisecond a row: fine for `inbo explain`
    parts = model.contributions(rows)
    assert list(parts.columns) == [*FEATURES, BIAS]
    np.testing.assert_allclose(parts.sum(axis=1), model.score(rows), rtol=1e-9, atol=1e-9)
    top = parts.drop(columns=BIAS).abs().mean().idxmax()
    assert top == "subscribed"


def test_rerank_keeps_each_users_top_n_in_score_order(
    planted: tuple[Reranker, pd.DataFrame],
) -> None:
    model, held_out = planted
    top = model.rerank(held_out.drop(columns=LABEL), n=3)
    assert (top.groupby("user_id").size() == 3).all()
    assert top.groupby("user_id")["rank"].agg(list).map(lambda r: r == [1, 2, 3]).all()
    assert (top.groupby("user_id")["score"].diff().dropna() <= 0).all()
    best = held_out.assign(s=model.score(held_out)).sort_values("s").groupby("user_id").tail(1)
    firsts = top[top["rank"] == 1].set_index("user_id")["item_id"]
    assert firsts.equals(best.set_index("user_id")["item_id"].sort_index())


def test_save_and_load_in_a_fresh_process_gives_identical_scores(
    planted: tuple[Reranker, pd.DataFrame], tmp_path: Path
) -> None:
    model, held_out = planted
    model.save(tmp_path / "model")
    held_out.to_parquet(tmp_path / "features.parquet")
    script = (
        "import sys, numpy as np, pandas as pd; from pathlib import Path;"
        "from models.reranker import Reranker;"
        "d = Path(sys.argv[1]); m = Reranker.load(d / 'model');"
        "np.save(d / 'scores.npy', m.score(pd.read_parquet(d / 'features.parquet')))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), model.score(held_out))
    assert Reranker.load(tmp_path / "model").params == model.params
    pd.testing.assert_frame_equal(Reranker.load(tmp_path / "model").example, model.example)


def test_a_registered_reranker_is_lightgbms_flavor_and_scores_the_same(
    planted: tuple[Reranker, pd.DataFrame], settings: Settings, tmp_path: Path
) -> None:
    """Logged with `mlflow.lightgbm` (signature over FEATURES, a real input example), loaded back
    through the registry for publishing with identical scores."""
    import mlflow

    from pipelines import registry
    from pipelines.tracking import log_step_run

    model, held_out = planted
    model.save(tmp_path / "reranker")
    run_id = log_step_run(settings, "reranker", "b1", model.params, {"examples": 4000.0})
    version = registry.register(settings, "reranker", run_id, tmp_path / "reranker", "b1")
    info = mlflow.models.get_model_info(f"models:/inbo-reranker/{version}")
    assert "lightgbm" in info.flavors
    assert info.signature.inputs.input_names() == list(FEATURES)
    loaded = registry.load_reranker(settings, str(version))
    np.testing.assert_array_equal(loaded.score(held_out), model.score(held_out))
    assert loaded.params == model.params and loaded.features == model.features
    booster = mlflow.lightgbm.load_model(f"models:/inbo-reranker/{version}")
    np.testing.assert_allclose(booster.predict(held_out[list(FEATURES)]), model.score(held_out))


def test_no_positive_examples_is_a_named_error() -> None:
    examples = planted_examples(users=5, per_user=4, seed=1).assign(**{LABEL: 0})
    with pytest.raises(NoPositiveExamples, match="no positive labels among 20"):
        Reranker().fit(examples)
    assert issubclass(NoPositiveExamples, ValueError)
    with pytest.raises(NotFitted):
        Reranker().score(examples)


def test_missing_feature_columns_are_named() -> None:
    model = Reranker().fit(planted_examples(users=30, per_user=10, seed=2))
    with pytest.raises(ValueError, match="subscribed"):
        model.score(planted_examples(users=1, per_user=2, seed=2).drop(columns="subscribed"))


# -- the demo world ------------------------------------------------------------------------------


def popularity_candidates(events: pd.DataFrame, items: pd.DataFrame) -> CandidatesFn:
    """A stand-in for candidate generation: every published item, scored by past positives."""

    def candidates_at(cutoff: datetime) -> pd.DataFrame:
        past = history(events, cutoff)
        positive = past[past["event_type"].isin(POSITIVE_EVENTS)].groupby("item_id").size()
        published = items.loc[items["published_at"] < utc(cutoff), "item_id"]
        score = positive.reindex(published, fill_value=0) / max(int(positive.max()), 1)
        users = pd.DataFrame({"user_id": past["user_id"].unique()})
        return users.merge(score.rename("popularity_score").reset_index(), how="cross")

    return candidates_at


def cross_validated_scores(examples: pd.DataFrame, folds: int = 5) -> pd.Series:
    """Each user's rows scored by a reranker fitted on the other folds' users."""
    users = np.sort(examples["user_id"].unique())
    fold = pd.Series(np.random.default_rng(0).permutation(len(users)) % folds, index=users)
    in_fold = examples["user_id"].map(fold)
    scores = pd.Series(np.nan, index=examples.index)
    for k in range(folds):
        model = Reranker().fit(examples[in_fold != k])
        scores[in_fold == k] = model.score(examples[in_fold == k])
    return scores


def test_reranker_beats_popularity_on_the_demo_world(world: Settings, world_end: datetime) -> None:
    from features.interactions import load_events
    from inbo import tables
    from inbo.lake import Lake, batch_key
    from pipelines.ingest import ingest
    from pipelines.validate import validate_batch

    ingest(world_end)
    validate_batch(world_end)
    lake, batch = Lake(world.lake), batch_key(world_end)
    events, _ = load_events(lake, world_end - 30 * DAY, world_end)
    items = lake.read_batch(tables.ITEMS, batch)
    subscriptions = lake.read_batch(tables.staging("subscriptions"), batch)
    fn = popularity_candidates(events, items)
    examples = training_examples(events, items, subscriptions, fn, world_end - 2 * DAY)
    examples["reranker"] = cross_validated_scores(examples)
    examples["popularity"] = examples["popularity_score"].fillna(-1.0)
    reranked, popular = ndcg_at_k(examples, "reranker"), ndcg_at_k(examples, "popularity")
    log.info(
        "demo world: %d users, %d rows; nDCG@10 reranker %.3f, popularity %.3f",
        examples["user_id"].nunique(),
        len(examples),
        reranked,
        popular,
    )
    assert examples["user_id"].nunique() >= 30
    assert reranked > popular + 0.05

    # A sample of users, featurised from only their own events plus the catalogue's item table,
    # gets exactly the rows the full run gave them: how training stays flat at a million users.
    cutoff = world_end - 2 * DAY
    users = training_users(impression_labels(events, items, cutoff, 2.0), 25, seed=7)
    sampled = training_examples(
        events[events["user_id"].isin(users)],
        items,
        subscriptions,
        fn,
        cutoff,
        item_table=catalogue_item_features(events, items, cutoff),
    )
    assert sorted(sampled["user_id"].unique()) == users.tolist()
    expected = examples[examples["user_id"].isin(users)].drop(columns=["reranker", "popularity"])
    pd.testing.assert_frame_equal(sampled, expected.reset_index(drop=True))


def test_training_users_are_a_seeded_sample_of_users_with_a_positive_label() -> None:
    labels = pd.DataFrame({"user_id": [5, 5, 3, 9, 9, 1, 7], LABEL: [0, 1, 2, 0, 0, 1, 1]})
    assert training_users(labels, None).tolist() == [1, 3, 5, 7]  # 9 never engaged
    assert training_users(labels, 10).tolist() == [1, 3, 5, 7]
    drawn = training_users(labels, 2, seed=1)
    assert len(drawn) == 2 and set(drawn) <= {1, 3, 5, 7} and list(drawn) == sorted(drawn)
    assert training_users(labels, 2, seed=1).tolist() == drawn.tolist()
    draws = {tuple(training_users(labels, 2, seed=seed)) for seed in range(20)}
    assert len(draws) > 1  # the seed matters: it is a random sample, not the first users


def test_a_label_window_nobody_engaged_in_is_no_positive_examples(
    world: Settings, world_end: datetime
) -> None:
    """Impressions but no click or read after the cutoff: the named error the nightly logs and
    skips (the champion keeps serving), not a crash in candidate generation."""
    from dataclasses import replace

    from features.interactions import Recipe, build_interactions
    from models.hybrid import learn_reranker
    from pipelines.ingest import ingest
    from pipelines.training_data import load_training_data
    from pipelines.validate import validate_batch

    ingest(world_end)
    validate_batch(world_end)
    build_interactions(world_end)
    data = load_training_data(world, world_end)
    assert data.events is not None
    in_window = data.events["ts"] >= pd.Timestamp(world_end - 2 * DAY)
    engaged = data.events["event_type"].isin(ENGAGED_EVENTS)
    silent = replace(data, events=data.events[~(in_window & engaged)])
    with pytest.raises(NoPositiveExamples, match="nobody clicked or read"):
        learn_reranker(silent, 2.0, {}, 20, Recipe())
    _, examples = learn_reranker(data, 2.0, {}, 20, Recipe(), max_users=10)
    assert examples["user_id"].nunique() == 10  # the sample bounds who it learns from
