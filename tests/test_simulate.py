"""The app database schema and the simulated world: reproducible, consistent and with a signal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from inbo import app_schema
from pipelines.app import database as appdb
from pipelines.demo.catalogue import CATEGORIES, FILLER, VOCABULARY
from pipelines.demo.play import SOURCES
from pipelines.demo.simulate import simulate

END = datetime(2026, 11, 26)
USERS, ITEMS, DAYS, SEED = 500, 100, 6, 11
START = END - timedelta(days=DAYS)


@dataclass(frozen=True)
class World:
    url: str
    truth: Path
    tables: dict[str, pd.DataFrame]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def _read_all(url: str) -> dict[str, pd.DataFrame]:
    engine = appdb.app_engine(url)
    try:
        return {name: _read(engine, table) for name, table in app_schema.metadata.tables.items()}
    finally:
        engine.dispose()


def _read(engine: object, table: Table) -> pd.DataFrame:
    return pd.read_sql(select(table).order_by(*table.primary_key.columns), engine)


def _build(tmp: Path, seed: int = SEED) -> World:
    url = f"sqlite:///{tmp / 'app' / 'inbo_app.db'}"
    simulate(url, users=USERS, items=ITEMS, days=DAYS, seed=seed, end=END, truth_dir=tmp / "truth")
    return World(url, tmp / "truth", _read_all(url))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return _build(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def events(world: World) -> pd.DataFrame:
    return world["experience_interactions"]


def test_tables_have_the_app_column_names() -> None:
    columns = {
        name: list(table.columns.keys()) for name, table in app_schema.metadata.tables.items()
    }
    assert columns == {
        "users": ["id", "created_at", "updated_at", "country", "language"],
        "publishers": ["id", "name", "category", "created_at"],
        "newsletter_issues": [
            "id", "publisher_id", "title", "body_preview", "category", "tags", "language",
            "published_at", "created_at",
        ],
        "subscriptions": ["id", "user_id", "publisher_id", "subscribed_at", "unsubscribed_at"],
        "experience_interactions": [
            "id", "user_id", "issue_id", "kind", "occurred_at", "recorded_at", "session_id",
            "dwell_ms", "position", "surface", "device", "country", "rec_context",
        ],
        "reading_progress": [
            "user_id", "issue_id", "progress", "seconds_read", "started_at", "updated_at",
            "session_id", "device",
        ],
    }  # fmt: skip


def test_schema_compiles_for_postgres() -> None:
    ddl = {
        name: str(CreateTable(table).compile(dialect=postgresql.dialect()))
        for name, table in app_schema.metadata.tables.items()
    }
    assert "id SERIAL" in ddl["experience_interactions"]
    assert "id INTEGER NOT NULL" in ddl["users"]
    assert "PRIMARY KEY (user_id, issue_id)" in ddl["reading_progress"]


def test_app_engine_creates_the_folder_and_uses_wal(tmp_path: Path) -> None:
    engine = appdb.app_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'app.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
    assert (tmp_path / "a" / "b" / "app.db").exists()


def test_same_seed_gives_the_same_world_and_another_seed_another(
    world: World, tmp_path: Path
) -> None:
    again = _build(tmp_path / "again")
    for name, frame in world.tables.items():
        pd.testing.assert_frame_equal(again[name], frame, obj=name)
    for name in ("user_tastes", "items", "users"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(again.truth / f"{name}.parquet"),
            pd.read_parquet(world.truth / f"{name}.parquet"),
        )
    other = _build(tmp_path / "other", seed=12)
    assert not other["newsletter_issues"]["title"].equals(world["newsletter_issues"]["title"])
    assert len(other["experience_interactions"]) != len(world["experience_interactions"])


def test_summary_counts_rows_and_progress_is_reported(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    url = f"sqlite:///{tmp_path / 'app.db'}"
    summary = simulate(
        url, users=50, items=20, days=3, seed=1, end=datetime(2026, 11, 26, 1, tzinfo=UTC),
        truth_dir=tmp_path, progress=lambda *call: calls.append(call),
    )  # fmt: skip
    tables = _read_all(url)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert (summary.start, summary.end) == (datetime(2026, 11, 23, 1), datetime(2026, 11, 26, 1))
    for name, frame in tables.items():
        assert getattr(summary, name) == len(frame), name


def test_rejects_an_empty_world(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        simulate(
            f"sqlite:///{tmp_path / 'x.db'}",
            users=USERS, items=ITEMS, days=0, seed=SEED, end=END, truth_dir=tmp_path,
        )  # fmt: skip


def test_every_kind_is_recorded_and_plentiful(events: pd.DataFrame) -> None:
    counts = events["kind"].value_counts()
    assert set(counts.index) == set(app_schema.INTERACTION_KINDS)
    assert len(events) > 10 * USERS
    assert counts["impression"] > 10 * counts["click"] > 0


def test_ids_refer_to_existing_rows(world: World, events: pd.DataFrame) -> None:
    user_ids = set(world["users"]["id"])
    issue_ids = set(world["newsletter_issues"]["id"])
    publisher_ids = set(world["publishers"]["id"])
    assert set(world["newsletter_issues"]["publisher_id"]) <= publisher_ids
    assert set(world["subscriptions"]["user_id"]) <= user_ids
    assert set(world["subscriptions"]["publisher_id"]) <= publisher_ids
    for frame in (events, world["reading_progress"]):
        assert set(frame["user_id"]) <= user_ids
        assert set(frame["issue_id"]) <= issue_ids


def test_rows_arrive_in_order_some_hours_late_and_none_after_the_end(
    events: pd.DataFrame,
) -> None:
    lag = events["recorded_at"] - events["occurred_at"]
    assert (lag >= timedelta(0)).all()
    late = lag > timedelta(hours=1)
    assert 0.002 < late.mean() < 0.03
    assert lag.max() <= timedelta(hours=30, minutes=1)
    assert events["recorded_at"].max() < END
    assert events["recorded_at"].is_monotonic_increasing  # ids follow arrival, as in the app


def test_users_act_only_after_signup_and_inside_the_window(
    world: World, events: pd.DataFrame
) -> None:
    signup = events["user_id"].map(world["users"].set_index("id")["created_at"])
    assert (events["occurred_at"] >= signup).all()
    assert events["occurred_at"].min() >= START


def test_users_read_english_or_their_country_language(world: World) -> None:
    people = world["users"]
    native = people["country"].map({"DE": "de", "FR": "fr", "ES": "es"}).fillna("en")
    assert ((people["language"] == "en") | (people["language"] == native)).all()
    assert (people["language"] != "en").any()
    assert (people["updated_at"] >= people["created_at"]).all()


def test_churned_users_stop(world: World, events: pd.DataFrame) -> None:
    truth = pd.read_parquet(world.truth / "users.parquet").dropna(subset=["churned_at"])
    assert 0.05 < len(truth) / USERS < 0.3
    churned = events.merge(truth, on="user_id")
    assert len(churned) > 0
    sessions = churned.groupby("session_id").agg(
        began=("occurred_at", "min"), ended=("occurred_at", "max"), churned=("churned_at", "first")
    )
    assert (sessions["began"] <= sessions["churned"]).all()  # a last session may end after it
    assert (sessions["ended"] <= sessions["churned"] + timedelta(hours=3)).all()


def test_issues_are_shown_once_per_session_after_they_are_published(
    world: World, events: pd.DataFrame
) -> None:
    shown = events[events["kind"] == "impression"]
    published = shown["issue_id"].map(world["newsletter_issues"].set_index("id")["published_at"])
    assert (published <= shown["occurred_at"]).all()
    assert not shown.duplicated(["session_id", "issue_id"]).any()
    assert (shown.groupby("session_id")["position"].min() == 0).all()
    assert events.loc[events["kind"] == "click", "dwell_ms"].notna().all()
    assert events.loc[events["kind"] == "impression", "dwell_ms"].isna().all()


def test_email_clicks_follow_an_open(events: pd.DataFrame) -> None:
    assert set(events.loc[events["kind"] == "email_open", "surface"]) == {"email"}
    email = events[events["surface"] == "email"].set_index(["session_id", "issue_id"])
    opened = email.loc[email["kind"] == "email_open", "occurred_at"]
    clicked = email.loc[email["kind"] == "click", "occurred_at"]
    assert len(clicked) > 0
    assert (opened.reindex(clicked.index) <= clicked).all()


def test_rec_context_marks_feed_impressions_and_clicks(events: pd.DataFrame) -> None:
    with_context = events[events["rec_context"].notna()]
    assert set(with_context["kind"]) == {"impression", "click"}
    assert set(with_context["surface"]) == {"feed"}
    feed = events[events["kind"].isin(["impression", "click"]) & (events["surface"] == "feed")]
    assert feed["rec_context"].notna().all()
    parsed = pd.DataFrame([json.loads(text) for text in with_context["rec_context"]])
    assert set(parsed["source"]) <= set(SOURCES)
    assert set(parsed["variant"]) == {"control", "treatment"}
    assert parsed["table_version"].str.fullmatch(r"\d{8}T0200Z").all()


def test_subscription_changes_are_also_interactions(world: World, events: pd.DataFrame) -> None:
    issues = world["newsletter_issues"].set_index("id")
    changes = events[events["kind"].isin(["subscribe", "unsubscribe"])].copy()
    changes["publisher_id"] = changes["issue_id"].map(issues["publisher_id"])
    assert (changes["issue_id"].map(issues["published_at"]) <= changes["occurred_at"]).all()
    subs = world["subscriptions"]
    joined = changes[changes["kind"] == "subscribe"].merge(
        subs, left_on=["user_id", "publisher_id", "occurred_at"],
        right_on=["user_id", "publisher_id", "subscribed_at"],
    )  # fmt: skip
    assert len(joined) == (changes["kind"] == "subscribe").sum() > 0
    in_window = subs["subscribed_at"] >= START
    assert len(joined) >= 0.95 * in_window.sum()
    assert 0 < subs["unsubscribed_at"].notna().mean() < 0.3


def test_reads_have_partial_and_full_progress(world: World, events: pd.DataFrame) -> None:
    reads = world["reading_progress"]
    assert reads["progress"].between(0, 1, inclusive="right").all()
    assert (reads["progress"] < 0.9).mean() > 0.3
    assert (reads["progress"] >= 0.999).mean() > 0.1
    assert (reads["seconds_read"] > 0).all()
    assert (reads["updated_at"] >= reads["started_at"]).all()
    assert reads["progress"].corr(reads["seconds_read"]) > 0.3
    clicks = events.loc[events["kind"] == "click", ["user_id", "issue_id"]].drop_duplicates()
    assert len(reads.merge(clicks)) == len(reads)  # every read started with a click


def test_vocabularies_are_distinct_and_sized() -> None:
    assert len(CATEGORIES) == 12
    words = [word for category in CATEGORIES for word in VOCABULARY[category]]
    assert len(words) == len(set(words))
    assert all(30 <= len(VOCABULARY[category]) <= 40 for category in CATEGORIES)
    assert not set(words) & {word for filler in FILLER.values() for word in filler}


def test_issue_texts_use_their_category_vocabulary(world: World) -> None:
    issues = world["newsletter_issues"]
    all_topic_words = {word for vocabulary in VOCABULARY.values() for word in vocabulary}
    for issue in issues.itertuples():
        title, body = issue.title.lower().split(), issue.body_preview.split()
        assert 5 <= len(title) <= 10 and 30 <= len(body) <= 80
        topical = [word for word in title + body if word in all_topic_words]
        assert set(topical) <= set(VOCABULARY[issue.category])
        assert 2 <= len(issue.tags.split(",")) <= 4
        assert set(issue.tags.split(",")) <= set(VOCABULARY[issue.category])
    share = (
        issues["body_preview"]
        .str.split()
        .map(lambda words: sum(w in all_topic_words for w in words) / len(words))
    )
    assert 0.6 < share.mean() < 0.8
    assert (issues["published_at"] < START).mean() > 0.25
    new_days = issues["published_at"].dt.floor("D")
    assert new_days[new_days >= START].nunique() == DAYS


def test_users_click_more_in_the_categories_they_like(world: World, events: pd.DataFrame) -> None:
    tastes = pd.read_parquet(world.truth / "user_tastes.parquet")
    tastes["liking"] = tastes["weight"] / tastes.groupby("user_id")["weight"].transform("max")
    items = pd.read_parquet(world.truth / "items.parquet").rename(columns={"item_id": "issue_id"})
    acts = events[events["kind"].isin(["impression", "click"])].merge(items, on="issue_id")
    acts = acts.merge(tastes, on=["user_id", "category"])
    liked = acts[acts["liking"] >= 0.5]["kind"].value_counts()
    disliked = acts[acts["liking"] < 0.1]["kind"].value_counts()
    liked_ctr = liked["click"] / liked["impression"]
    disliked_ctr = disliked.get("click", 0) / disliked["impression"]
    assert liked_ctr > 5 * disliked_ctr


def test_dirty_share_breaks_that_share_of_rows_and_leaves_the_rest(
    world: World, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    simulate(
        url, users=USERS, items=ITEMS, days=DAYS, seed=SEED, end=END,
        truth_dir=tmp_path / "truth", dirty_share=0.01,
    )  # fmt: skip
    dirty = _read_all(url)["experience_interactions"]
    clean = world["experience_interactions"]
    assert len(dirty) == len(clean)
    flaws = {
        "unknown kind": dirty["kind"] == "swipe",
        "negative dwell": dirty["dwell_ms"] < 0,
        "unknown issue": dirty["issue_id"] == 9_000_000,
        "future clock": pd.to_datetime(dirty["occurred_at"])
        > pd.Timestamp("2099-01-01") - pd.Timedelta(days=1),
    }
    broken = pd.concat(flaws, axis=1).any(axis=1)
    assert all(mask.sum() > 0 for mask in flaws.values())
    assert 0.005 < broken.mean() < 0.02
    columns = ["user_id", "issue_id", "kind", "occurred_at", "session_id"]
    pd.testing.assert_frame_equal(
        dirty.loc[~broken, columns].reset_index(drop=True),
        clean.loc[~broken, columns].reset_index(drop=True),
    )
