"""Baseline models and the blend: hand-checked rankings, reasons and exclusions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from inbo import schemas
from inbo.reasons import PRIORITY, SOURCE_OF, catalogue_of, render_frame
from models.base import TrainingData
from models.candidates import FRESH_DAYS, SCORE_COLUMNS, _combine
from models.continue_reading import ContinueReadingModel
from models.factory import create
from models.hybrid import blend
from models.popularity import PopularityModel

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)


def items_frame() -> pd.DataFrame:
    rows = [
        (10, "sport", 2),
        (11, "sport", 2),
        (12, "sport", 2),
        (20, "finance", 2),
        (21, "finance", 2),
        (30, "food", -1),  # published after as_of: must never be recommended
    ]
    frame = pd.DataFrame(
        {
            "item_id": [r[0] for r in rows],
            "publisher_id": 1,
            "publisher": "p",
            "title": "t",
            "description": "d",
            "category": [r[1] for r in rows],
            "tags": [[] for _ in rows],
            "published_at": [AS_OF - timedelta(days=r[2]) for r in rows],
            "language": "en",
        }
    )
    return schemas.conform(frame, schemas.ITEMS)


def interactions_frame(rows: list[tuple[int, int, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "weight"])
    frame = frame.assign(events=1, last_ts=AS_OF, read_fraction=0.0, is_read=False, dismissed=False)
    return schemas.conform(frame, schemas.INTERACTIONS)


def training(
    rows: list[tuple[int, int, float]], started: pd.DataFrame | None = None
) -> TrainingData:
    return TrainingData(
        interactions=interactions_frame(rows),
        items=items_frame(),
        continue_reading=started
        if started is not None
        else schemas.empty(schemas.CONTINUE_READING),
        as_of=AS_OF,
    )


def test_popularity_orders_items_by_positive_weight() -> None:
    data = training([(1, 10, 3.0), (2, 10, 1.0), (2, 20, 2.0), (3, 11, 1.0), (3, 12, -5.0)])
    model = PopularityModel().fit(data)
    assert model.scores["item_id"].tolist()[:3] == [10, 20, 11]
    assert 30 not in model.scores["item_id"].tolist()
    top = model.global_top(2)
    assert top["item_id"].tolist() == [10, 20]
    assert top["score"].tolist() == pytest.approx([1.0, 0.5])
    assert set(top["reason_code"]) == {"trending"}


def test_a_user_who_only_reads_sport_gets_sport() -> None:
    data = training([(1, 10, 3.0), (2, 20, 5.0), (2, 21, 4.0), (3, 11, 1.0)])
    model = PopularityModel().fit(data)
    recs = model.recommend(np.array([1]), n=10)
    assert set(recs["item_id"]) == {10, 11, 12}
    reasons = render_frame(recs, catalogue_of(items_frame()))
    assert (reasons == "Popular in Sport, a topic you read").all()


def test_category_shares_split_a_mixed_reader() -> None:
    data = training([(1, 10, 3.0), (1, 20, 1.0)])
    model = PopularityModel().fit(data)
    shares = model.affinity.set_index("category")["share"]
    assert shares["sport"] == pytest.approx(0.75) and shares["finance"] == pytest.approx(0.25)


def test_continue_reading_newest_first_with_progress_in_reason() -> None:
    started = schemas.conform(
        pd.DataFrame(
            {
                "user_id": [1, 1],
                "item_id": [10, 11],
                "read_fraction": [0.4, 0.25],
                "updated_at": [AS_OF - timedelta(days=2), AS_OF - timedelta(days=1)],
            }
        ),
        schemas.CONTINUE_READING,
    )
    model = ContinueReadingModel().fit(training([], started))
    recs = model.recommend(np.array([1, 2]), n=10)
    assert recs["item_id"].tolist() == [11, 10]
    assert render_frame(recs, catalogue_of(items_frame())).tolist() == [
        "Continue reading: you are 25% through",
        "Continue reading: you are 40% through",
    ]


def test_models_round_trip_through_save_and_load(tmp_path) -> None:
    data = training([(1, 10, 3.0), (2, 20, 1.0)])
    for name in ("popularity", "continue_reading"):
        fitted = create(name).fit(data)
        fitted.save(tmp_path / name)
        loaded = type(fitted).load(tmp_path / name)
        pd.testing.assert_frame_equal(
            fitted.recommend(np.array([1, 2]), 5), loaded.recommend(np.array([1, 2]), 5)
        )


def candidates(rows: list[tuple[int, int, float, str]]) -> pd.DataFrame:
    """Candidates as `propose` gives them: each score in the column of the code's source."""
    frame = pd.DataFrame(
        [
            {
                "user_id": u,
                "item_id": i,
                "reason_code": code,
                "reason_ref": None,
                SCORE_COLUMNS[SOURCE_OF[code]]: s,
            }
            for u, i, s, code in rows
        ]
    )
    keys = ["user_id", "item_id", "reason_code", "reason_ref"]
    return frame.reindex(columns=[*keys, *SCORE_COLUMNS.values()])


def test_blend_excludes_seen_puts_continue_reading_first_and_ranks() -> None:
    pool = candidates(
        [
            (1, 10, 0.9, "popular_in_category"),
            (1, 11, 0.8, "popular_in_category"),
            (1, 12, 0.1, "continue_reading"),
            (1, 10, 0.5, "trending"),
            (1, 13, 0.4, "trending"),
        ]
    )
    seen = pd.DataFrame({"user_id": [1], "item_id": [11]})
    recs = blend(pool, seen, n=3)
    assert recs["item_id"].tolist() == [12, 10, 13]
    assert recs["rank"].tolist() == [1, 2, 3]
    assert recs["reason_code"].tolist() == ["continue_reading", "popular_in_category", "trending"]


def test_blend_caps_each_user_at_n() -> None:
    pool = candidates([(u, i, float(i), "trending") for u in (1, 2) for i in range(10)])
    recs = blend(pool, pd.DataFrame({"user_id": [], "item_id": []}, dtype="int64"), n=4)
    assert recs.groupby("user_id").size().tolist() == [4, 4]
    assert recs[recs["user_id"] == 1]["item_id"].tolist() == [9, 8, 7, 6]


def combine_reference(long: pd.DataFrame, popularity: PopularityModel, data: TrainingData):
    """`_combine` as it was with a Python join per pair: the vectorised one must match it."""
    keys = ["user_id", "item_id"]
    scores = long.pivot_table(index=keys, columns="column", values="score", aggfunc="max")
    scores = scores.reindex(columns=[*SCORE_COLUMNS.values(), "fresh_score"])
    order = long["reason_code"].map(PRIORITY).fillna(len(PRIORITY))
    best = long.assign(_order=order).sort_values([*keys, "_order"]).drop_duplicates(keys)
    sources = long.groupby(keys)["reason_code"].agg(lambda codes: ",".join(sorted(set(codes))))
    frame = (
        best.set_index(keys)[["reason_code", "reason_ref"]]
        .join(scores)
        .join(sources.rename("sources"))
    ).reset_index()
    global_score = popularity.scores.set_index("item_id")["score"]
    frame["popularity_score"] = frame["item_id"].map(global_score / global_score.max())
    age = pd.Timestamp(data.as_of) - frame["item_id"].map(
        data.items.set_index("item_id")["published_at"]
    )
    frame["is_fresh"] = (age <= timedelta(days=FRESH_DAYS)).astype(float)
    frame["n_sources"] = (
        frame[[*SCORE_COLUMNS.values(), "fresh_score"]].notna().sum(axis=1).astype(float)
    )
    return frame.drop(columns="fresh_score")


def test_combine_matches_the_per_pair_join_exactly() -> None:
    rng = np.random.default_rng(7)
    codes = {
        "als_score": ["because_you_read"],
        "content_score": ["similar_to_read"],
        "category_score": ["popular_in_category"],
        "continue_reading": ["continue_reading"],
        "fresh_score": ["subscribed_publisher", "new_this_week", "editor_pick"],  # one unranked
    }
    parts = []
    for column, reasons in codes.items():
        pairs = rng.integers([1, 0], [80, 6], size=(300, 2))
        code = rng.choice(reasons, size=len(pairs))
        parts.append(
            pd.DataFrame(
                {
                    "user_id": pairs[:, 0],
                    "item_id": items_frame()["item_id"].to_numpy()[pairs[:, 1]],
                    "score": rng.random(len(pairs)).round(1),  # ties across sources
                    "reason_code": code,
                    "reason_ref": pd.Series(pairs[:, 1], dtype="Int64").mask(
                        rng.random(len(pairs)) < 0.5
                    ),
                    "column": column,
                }
            )
        )
    long = pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=3)
    data = training([(u, i, 1.0 + u % 3) for u in range(1, 9) for i in (10, 11, 20)])
    popularity = PopularityModel().fit(data)
    combined = _combine(long, popularity, data)
    assert combined["sources"].str.contains(",").any()  # some pairs came from several sources
    pd.testing.assert_frame_equal(combined, combine_reference(long, popularity, data))
    assert combined.dtypes.to_dict() == combine_reference(long, popularity, data).dtypes.to_dict()


def test_fresh_candidates_keep_only_issues_that_can_reach_a_top_n_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cutting each publisher's and category's fresh issues to its n best (ties kept) before the
    user join changes nothing, even with many tied publication times."""
    import models.candidates as candidates

    rng = np.random.default_rng(0)
    as_of = datetime(2026, 11, 20, tzinfo=UTC)
    items = pd.DataFrame(
        {
            "item_id": np.arange(600),
            "publisher_id": rng.integers(0, 12, 600),
            "category": rng.choice(["tech", "science", "sports"], 600),
            "published_at": [as_of - timedelta(hours=int(h)) for h in rng.integers(0, 200, 600)],
        }
    ).assign(publisher=lambda f: "Pub " + f["publisher_id"].astype(str))
    subs = pd.DataFrame(
        {
            "user_id": rng.integers(0, 80, 300),
            "publisher_id": rng.integers(0, 12, 300),
            "subscribed_at": pd.Timestamp(as_of - timedelta(days=30)),
            "unsubscribed_at": pd.Series(pd.NaT, index=range(300), dtype="datetime64[us, UTC]"),
        }
    )
    affinity = pd.DataFrame(
        {"user_id": rng.integers(0, 80, 150), "category": rng.choice(["tech", "sports"], 150)}
    )
    data = TrainingData(
        interactions=pd.DataFrame(),
        items=items,
        continue_reading=pd.DataFrame(),
        as_of=as_of,
        subscriptions=subs,
    )
    users = np.arange(80)

    cut = candidates.fresh_candidates(users, data, affinity, 4)
    monkeypatch.setattr(candidates, "_freshest", lambda fresh, key, n: fresh)
    whole = candidates.fresh_candidates(users, data, affinity, 4)

    assert len(cut) > 0
    pd.testing.assert_frame_equal(cut.reset_index(drop=True), whole.reset_index(drop=True))
