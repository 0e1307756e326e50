"""The hourly refresh against a real nightly table: exactly-once increments, fresh rows, freshness.

One nightly run (through Airflow) builds the base; each test works on its own copy of the lake,
app database and Redis keys, adds app rows after the nightly's batch end, and runs the hourly
steps for the next intervals.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select

from inbo import schemas, tables
from inbo.lake import Lake, batch_key
from inbo.settings import REPO_ROOT, Settings, get_settings

pytestmark = pytest.mark.e2e

BASE_PREFIX = "hourly-base"


@pytest.fixture(scope="module")
def nightly_base(
    world_template: Path,
    redis_server: str,
    world_end: datetime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """A var dir and Redis keys (prefix `hourly-base`) after one nightly DAG run on the world."""
    from airflow.dag_processing.dagbag import BundleDagBag

    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=os.environ)
    var_dir = tmp_path_factory.mktemp("hourly-base") / "var"
    shutil.copytree(world_template, var_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INBO_VAR_DIR", str(var_dir))
        patch.setenv("INBO_REDIS_URL", redis_server)
        patch.setenv("INBO_REDIS_PREFIX", BASE_PREFIX)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        dag = BundleDagBag(
            dag_folder=str(REPO_ROOT / "dags"), bundle_path=REPO_ROOT / "dags"
        ).get_dag("inbo_nightly")
        assert str(dag.test(logical_date=world_end).state) == "success"
    get_settings.cache_clear()
    yield var_dir


@pytest.fixture
def hourly(
    nightly_base: Path,
    redis_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Settings:
    """Settings on a private copy of the nightly base: lake, app DB and Redis keys."""
    from inbo.services import redis_client

    var_dir = tmp_path / "var"
    shutil.copytree(nightly_base, var_dir)
    prefix = f"h{abs(hash(request.node.nodeid)) % 10**8}"
    monkeypatch.setenv("INBO_VAR_DIR", str(var_dir))
    monkeypatch.setenv("INBO_REDIS_URL", redis_server)
    monkeypatch.setenv("INBO_REDIS_PREFIX", prefix)
    monkeypatch.setenv("INBO_APP_REDIS_PREFIX", f"{prefix}-app")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    client = redis_client(settings)
    for key in client.scan_iter(match=f"{BASE_PREFIX}:*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        client.copy(name, name.replace(BASE_PREFIX, prefix), replace=True)
    return settings


def run_hourly(end: datetime) -> Any:
    """Every step of the hourly DAG, in its order, for the interval ending at `end`."""
    from features.activity import build_activity
    from features.embeddings import embed_new_items
    from pipelines.hourly import publish_active_users, score_active_users
    from pipelines.ingest import ingest_exclusive
    from pipelines.validate import validate_exclusive

    ingest_exclusive(end)
    validate_exclusive(end)
    build_activity(end)
    embed_new_items(end)
    score_active_users(end)
    return publish_active_users(end)


def add_rows(settings: Settings, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert `rows`; a reading-progress row updates the user's row for that issue if there is
    one, as the app does (a sampled user may already have started the issue)."""
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from inbo import app_schema
    from pipelines.app.database import app_engine

    statement = sqlite_insert(getattr(app_schema, table))
    if table == "reading_progress":
        statement = statement.on_conflict_do_update(
            index_elements=["user_id", "issue_id"],
            set_={column: statement.excluded[column] for column in rows[0]},
        )
    engine = app_engine(settings.app_db)
    with engine.begin() as conn:
        conn.execute(statement, rows)
    engine.dispose()


def interaction(user: int, item: int, kind: str, at: datetime, recorded: datetime | None = None):
    naive = at.replace(tzinfo=None)
    return {
        "user_id": user,
        "issue_id": item,
        "kind": kind,
        "occurred_at": naive,
        "recorded_at": (recorded or at).replace(tzinfo=None),
        "session_id": f"s-{user}-{naive:%H%M%S}",
        "dwell_ms": 1000,
        "position": 1,
        "surface": "feed",
        "device": "ios",
        "country": "FR",
        "rec_context": None,
    }


def read_to_the_end(user: int, item: int, at: datetime) -> dict[str, Any]:
    naive = at.replace(tzinfo=None)
    return {
        "user_id": user,
        "issue_id": item,
        "progress": 1.0,
        "seconds_read": 240.0,
        "started_at": naive - timedelta(minutes=5),
        "updated_at": naive,
        "session_id": f"r-{user}",
        "device": "ios",
    }


def live_items(settings: Settings, user: int) -> list[int]:
    from pipelines.publish.steps import read_recs

    answer = read_recs(user, settings)
    assert answer["personal"]
    return [item["item_id"] for item in answer["items"]]


def lake_events(settings: Settings) -> pd.DataFrame:
    lake = Lake(settings.lake)
    paths = lake.fs.glob(f"{lake.path(tables.USER_EVENTS.path)}/date=*/*.parquet")
    return lake.read_files(sorted(paths), schemas.USER_EVENTS)


def lake_digest(settings: Settings) -> dict[str, str]:
    """Content hash of every file in the lake but the step reports that hold run timings."""
    root = Path(settings.lake)
    timed = (tables.HOURLY_SCORE_REPORTS, tables.RECONCILE_REPORTS)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not str(path.relative_to(root)).startswith(timed)
    }


def redis_dump(settings: Settings) -> dict[str, bytes]:
    from inbo.services import redis_client

    client = redis_client(settings)
    names = sorted(client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000))
    return {str(name): client.dump(name) for name in names}


def test_read_and_dismissed_issues_are_gone_after_the_hourly_run(
    hourly: Settings, world_end: datetime
) -> None:
    import jsonschema

    from pipelines.publish.contract import USER_RECS_SCHEMA
    from pipelines.publish.steps import read_recs, sample_users

    user = sample_users(1, hourly)[0]
    before = live_items(hourly, user)
    read, hidden = before[0], before[1]
    add_rows(
        hourly, "reading_progress", [read_to_the_end(user, read, world_end + timedelta(minutes=10))]
    )
    add_rows(
        hourly,
        "experience_interactions",
        [interaction(user, hidden, "hide", world_end + timedelta(minutes=12))],
    )

    report = run_hourly(world_end + timedelta(hours=1))

    after = live_items(hourly, user)
    assert report.status == "published" and report.users == 1
    assert read not in after and hidden not in after
    assert len(after) == len(before)
    answer = read_recs(user, hourly)
    assert answer["table_version"] == report.version
    jsonschema.validate(answer["payload"], json.loads(USER_RECS_SCHEMA.read_text()))
    assert [item["rank"] for item in answer["items"]] == list(range(1, len(after) + 1))


def test_freshness_is_recorded_from_the_newest_event_to_the_live_row(
    hourly: Settings, world_end: datetime
) -> None:
    from pipelines.hourly import latest_refresh
    from pipelines.publish.steps import sample_users

    user = sample_users(1, hourly)[0]
    newest = world_end + timedelta(minutes=42)
    add_rows(hourly, "experience_interactions", [interaction(user, 1, "email_open", newest)])
    started = pd.Timestamp.now(tz="UTC")

    report = run_hourly(world_end + timedelta(hours=1))

    assert report.newest_event_at == newest.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert pd.Timestamp(report.published_at) >= started
    expected = (pd.Timestamp(report.published_at) - pd.Timestamp(newest)).total_seconds()
    assert report.freshness_seconds == pytest.approx(expected, abs=1)
    assert latest_refresh(hourly) == report


def test_running_the_same_interval_twice_leaves_lake_and_redis_identical(
    hourly: Settings, world_end: datetime
) -> None:
    from pipelines.publish.steps import sample_users

    users = sample_users(3, hourly)
    at = world_end + timedelta(minutes=20)
    add_rows(hourly, "experience_interactions", [interaction(u, 2, "click", at) for u in users])
    end = world_end + timedelta(hours=1)

    first = run_hourly(end)
    lake_after_first, redis_after_first = lake_digest(hourly), redis_dump(hourly)
    second = run_hourly(end)

    assert first.status == "published" and first.users == len(users)
    assert second == first  # nothing written again: the report of the run that applied it
    assert lake_digest(hourly) == lake_after_first
    assert redis_dump(hourly) == redis_after_first


def test_overlapping_intervals_and_a_late_row_ingest_every_event_exactly_once(
    hourly: Settings, world_end: datetime
) -> None:
    from pipelines.publish.steps import sample_users

    user = sample_users(1, hourly)[0]
    add_rows(
        hourly,
        "experience_interactions",
        [interaction(user, 3, "click", world_end + timedelta(minutes=m)) for m in (5, 50)],
    )
    run_hourly(world_end + timedelta(hours=1))
    late = interaction(user, 4, "click", world_end + timedelta(minutes=30))
    add_rows(hourly, "experience_interactions", [late])  # committed after the first run read
    add_rows(
        hourly,
        "experience_interactions",
        [interaction(user, 5, "click", world_end + timedelta(minutes=70))],
    )

    run_hourly(world_end + timedelta(minutes=90))  # overlaps both hours
    run_hourly(world_end + timedelta(hours=2))
    run_hourly(world_end + timedelta(hours=1))  # an earlier interval again

    events = lake_events(hourly)
    assert not events["event_id"].duplicated().any()
    mine = events[(events["user_id"] == user) & (events["ts"] >= pd.Timestamp(world_end))]
    assert sorted(mine["item_id"].tolist()) == [3, 3, 4, 5]


def test_a_new_issue_from_a_followed_publisher_can_appear_the_same_hour(
    hourly: Settings, world_end: datetime
) -> None:
    from inbo.app_schema import newsletter_issues
    from pipelines.app.database import app_engine
    from pipelines.publish.steps import read_similar

    lake = Lake(hourly.lake)
    subs = lake.read_batch(tables.SUBSCRIPTIONS, batch_key(world_end))
    followed = subs[subs["unsubscribed_at"].isna()]
    users = followed["user_id"].unique()[:20].tolist()
    engine = app_engine(hourly.app_db)
    with engine.connect() as conn:
        issue = dict(
            conn.execute(select(newsletter_issues).order_by(newsletter_issues.c.id.desc()))
            .mappings()
            .first()
        )
    engine.dispose()
    publisher = int(followed.loc[followed["user_id"] == users[0], "publisher_id"].iloc[0])
    fans = followed.loc[followed["publisher_id"] == publisher, "user_id"].unique().tolist()
    published = world_end + timedelta(minutes=5)
    new_id = issue["id"] + 1
    add_rows(
        hourly,
        "newsletter_issues",
        [
            {
                **issue,
                "id": new_id,
                "publisher_id": publisher,
                "title": issue["title"] + " (today's edition)",
                "published_at": published.replace(tzinfo=None),
                "created_at": published.replace(tzinfo=None),
            }
        ],
    )
    at = world_end + timedelta(minutes=30)
    add_rows(hourly, "experience_interactions", [interaction(u, 1, "email_open", at) for u in fans])

    run_hourly(world_end + timedelta(hours=1))

    assert any(new_id in live_items(hourly, user) for user in fans)
    similar = read_similar(new_id, hourly)
    assert similar is not None and len(similar["items"]) > 0


def test_a_new_nightly_version_is_caught_up_by_the_next_run(
    hourly: Settings, world_end: datetime
) -> None:
    """Scored against one version, superseded before publishing: the next run covers both hours."""
    from features.activity import build_activity
    from pipelines.hourly import publish_active_users, score_active_users
    from pipelines.ingest import ingest_exclusive
    from pipelines.publish.steps import (
        activate_version,
        publish_batch,
        sample_users,
        verify_version,
    )
    from pipelines.validate import validate_exclusive

    first, second = sample_users(2, hourly)
    hour = world_end + timedelta(hours=1)
    add_rows(
        hourly,
        "experience_interactions",
        [interaction(first, 6, "click", hour - timedelta(minutes=45))],
    )
    ingest_exclusive(hour)
    validate_exclusive(hour)
    build_activity(hour)
    scored = score_active_users(hour)
    version = verify_version(world_end, publish_batch(world_end, hourly), hourly)
    activate_version(version, hourly)  # a new nightly version goes live meanwhile
    skipped = publish_active_users(hour)
    add_rows(
        hourly,
        "experience_interactions",
        [interaction(second, 6, "click", hour + timedelta(minutes=15))],
    )

    report = run_hourly(world_end + timedelta(hours=2))

    assert scored.users_scored == 1 and scored.version != version
    assert skipped.status == "superseded"
    assert report.status == "published" and report.version == version
    assert report.users == 2


def test_status_shows_the_refreshes_of_the_live_table_not_of_a_retired_one(
    hourly: Settings, world_end: datetime
) -> None:
    from pipelines.health import check_health
    from pipelines.publish.steps import publish_table, sample_users

    user = sample_users(1, hourly)[0]
    add_rows(
        hourly,
        "experience_interactions",
        [interaction(user, 3, "click", world_end + timedelta(minutes=20))],
    )
    refreshed = run_hourly(world_end + timedelta(hours=1))
    shown = check_health(hourly).last_refresh
    assert refreshed.status == "published"
    assert shown is not None and shown["version"] == refreshed.version

    publish_table(world_end, hourly)  # a new nightly version goes live, nothing refreshed it yet

    assert check_health(hourly).last_refresh is None


def test_the_hourly_dag_runs_end_to_end_through_airflow_after_the_nightly(
    hourly: Settings, world_end: datetime
) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    from pipelines.hourly import latest_refresh
    from pipelines.publish.steps import sample_users

    users = sample_users(5, hourly)
    at = world_end + timedelta(minutes=25)
    add_rows(hourly, "experience_interactions", [interaction(u, 7, "click", at) for u in users])
    dag = BundleDagBag(dag_folder=str(REPO_ROOT / "dags"), bundle_path=REPO_ROOT / "dags").get_dag(
        "inbo_hourly"
    )

    run = dag.test(logical_date=world_end + timedelta(hours=1))

    assert str(run.state) == "success"
    report = latest_refresh(hourly)
    assert report is not None and report.batch == batch_key(world_end + timedelta(hours=1))
    assert report.status == "published" and report.users == len(users)
    reconciled = json.loads(Lake(hourly.lake).read_json(tables.RECONCILE_REPORTS, report.batch))
    assert reconciled["items_checked"] > 0


def test_a_manual_hourly_run_repairs_the_app_counters_only_when_confirmed(
    hourly: Settings, world_end: datetime
) -> None:
    """This world's app kept no counters at all: every item has drifted, and repair fills them."""
    from airflow.dag_processing.dagbag import BundleDagBag

    from pipelines.reconcile import reconcile_counters

    dag = BundleDagBag(dag_folder=str(REPO_ROOT / "dags"), bundle_path=REPO_ROOT / "dags").get_dag(
        "inbo_hourly"
    )
    hour = world_end + timedelta(hours=1)

    refused = dag.test(logical_date=hour, run_conf={"repair_counters": True, "confirm": "ok"})
    drifted = reconcile_counters(hour)
    repaired = dag.test(logical_date=hour, run_conf={"repair_counters": True, "confirm": "repair"})
    after = reconcile_counters(hour)

    assert str(refused.state) == "failed"
    assert drifted.inconsistent_items == drifted.items_checked > 0
    assert str(repaired.state) == "success"
    assert after.inconsistent_items == 0
