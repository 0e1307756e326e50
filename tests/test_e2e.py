"""End to end: the nightly DAG through Airflow against real Redis, MLflow and Great Expectations.

`dag.test()` runs every task in this process on the generated world; then the published table is
read back the way a frontend reads it and checked against the contract.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from inbo import tables
from inbo.lake import Lake, batch_key
from inbo.settings import REPO_ROOT, Settings
from pipelines.score import read_recs_table

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Create the test session's Airflow metadata DB (the same command users run)."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=os.environ)


def run_nightly(logical_date: datetime) -> str:
    from airflow.dag_processing.dagbag import BundleDagBag

    dags = REPO_ROOT / "dags"
    dag = BundleDagBag(dag_folder=str(dags), bundle_path=dags).get_dag("inbo_nightly")
    run = dag.test(logical_date=logical_date)
    return str(run.state)


@pytest.fixture(scope="module")
def nightly(
    airflow_db: None,
    world_template: Path,
    redis_server: str,
    world_end: datetime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    """One nightly run on a copy of the world, shared by the tests that only read its output."""
    from inbo.settings import get_settings

    var_dir = tmp_path_factory.mktemp("nightly") / "var"
    shutil.copytree(world_template, var_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INBO_VAR_DIR", str(var_dir))
        patch.setenv("INBO_REDIS_URL", redis_server)
        patch.setenv("INBO_REDIS_PREFIX", "e2e")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        assert run_nightly(world_end) == "success"
        yield get_settings()
    get_settings.cache_clear()


def test_nightly_dag_publishes_a_valid_table(nightly: Settings, world_end: datetime) -> None:
    from inbo.reasons import catalogue_of, render_frame
    from inbo.services import redis_client
    from pipelines.publish.contract import USER_RECS_SCHEMA, Keys
    from pipelines.publish.lifecycle import live_meta
    from pipelines.publish.steps import read_recs

    live_redis = nightly

    lake = Lake(live_redis.lake)
    batch = batch_key(world_end)
    recs = read_recs_table(world_end, live_redis)
    client = redis_client(live_redis)
    version = client.get(Keys(live_redis.redis_prefix).current)
    assert version and version.startswith(batch)

    meta = live_meta(client, live_redis.redis_prefix)
    assert meta is not None and meta["status"] == "live" and meta["shards"] >= 1
    assert meta["counts"]["users"] == recs["user_id"].nunique() > 100

    user_schema = json.loads(USER_RECS_SCHEMA.read_text())
    catalogue = catalogue_of(lake.read_batch(tables.ITEMS, batch))
    for user_id, rows in list(recs.groupby("user_id"))[:50]:
        answer = read_recs(int(user_id), live_redis, catalogue)
        assert answer["personal"] and answer["table_version"] == version
        jsonschema.validate(answer["payload"], user_schema)
        items = answer["items"]
        ranked = rows.sort_values("rank")
        assert [i["item_id"] for i in items] == ranked["item_id"].tolist()
        assert all(i["reason_code"] and i["reason"] for i in items)
        assert [i["reason"] for i in items] == render_frame(ranked, catalogue).tolist()

    assert "inbo-als v" in meta["models"]["als"] and "inbo-reranker v" in meta["models"]["reranker"]
    assert meta["counts"]["similar_items"] > 0

    from pipelines.explain import explain_item

    firsts = recs[recs["rank"] == 1]
    top = firsts.iloc[0]
    explained = explain_item(int(top["user_id"]), int(top["item_id"]), world_end, live_redis)
    assert explained.score == pytest.approx(float(top["score"]), rel=1e-6)
    assert explained.reason == render_frame(firsts.head(1), catalogue).iloc[0]

    stranger = read_recs(10**9, live_redis)
    assert not stranger["personal"] and stranger["items"]

    interactions = lake.read_batch(tables.INTERACTIONS, batch)
    read_pairs = set(
        zip(
            *interactions.loc[interactions["is_read"], ["user_id", "item_id"]].T.to_numpy(),
            strict=True,
        )
    )
    published_pairs = set(zip(recs["user_id"], recs["item_id"], strict=True))
    assert read_pairs and not read_pairs & published_pairs, "an already-read issue was recommended"


def test_health_sees_the_nightly_run_its_champions_and_its_batch(
    nightly: Settings, world_end: datetime
) -> None:
    """`inbo health` reads the run from Airflow's own metadata DB, the champions from MLflow."""
    from pipelines.monitoring.health import Level, check_components

    airflow_db = f"sqlite:///{os.environ['AIRFLOW_HOME']}/var/airflow/airflow.db"  # airflow.cfg's
    settings = nightly.model_copy(update={"airflow_db_url": airflow_db})
    checks = {
        c.name: c for c in check_components(settings, now=world_end + timedelta(hours=3)).checks
    }

    assert checks["nightly_run"].level is Level.OK, checks["nightly_run"].detail
    assert checks["nightly_run"].detail.startswith("inbo_nightly success")
    assert checks["mlflow_registry"].level is Level.OK
    assert "als v" in checks["mlflow_registry"].detail
    assert "reranker v" in checks["mlflow_registry"].detail
    assert checks["live_table"].level is Level.OK and checks["redis"].level is Level.OK
    assert checks["last_batch"].detail.startswith(batch_key(world_end))


def test_rerunning_a_night_gives_the_same_table_and_keeps_the_previous_version(
    nightly: Settings, world_end: datetime
) -> None:
    from inbo.services import redis_client
    from pipelines.publish.contract import Keys

    live_redis = nightly
    first = read_recs_table(world_end, live_redis)
    client = redis_client(live_redis)
    keys = Keys(live_redis.redis_prefix)
    first_version = client.get(keys.current)

    assert run_nightly(world_end) == "success"
    again = read_recs_table(world_end, live_redis)
    assert again.equals(first)
    second_version = client.get(keys.current)
    assert second_version != first_version
    assert client.zscore(keys.versions, first_version) is not None  # kept for rollback
    assert json.loads(client.get(keys.meta(first_version)))["status"] == "retired"


def test_recommendations_follow_the_simulated_tastes(
    nightly: Settings, world_end: datetime
) -> None:
    """Personal rows hit a user's true favourite categories far more often than chance."""
    import pandas as pd

    live_redis = nightly
    recs = read_recs_table(world_end, live_redis)
    truth = pd.read_parquet(live_redis.var_dir / "simulation" / "user_tastes.parquet")
    items = pd.read_parquet(live_redis.var_dir / "simulation" / "items.parquet")
    top = recs[recs["rank"] <= 10].merge(items[["item_id", "category"]], on="item_id")
    favourite = truth.sort_values("weight", ascending=False).groupby("user_id").head(2)
    hits = top.merge(favourite, on=["user_id", "category"], how="left")["weight"].notna().mean()
    catalogue_share = items[["item_id", "category"]].merge(favourite, on="category").groupby(
        "user_id"
    ).size().mean() / len(items)
    assert hits > 2 * catalogue_share, (hits, catalogue_share)


def test_a_run_without_a_logical_date_processes_the_last_complete_batch(
    airflow_db: None, world: Settings, live_redis: Settings, world_end: datetime
) -> None:
    """What a REST trigger with an empty body makes in Airflow 3: a run with no logical date and
    no data interval. Its tasks take the batch that ended at the schedule's last tick before
    `run_after` (the hourly's ingest runs here; the rest are marked successful)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    from pipelines.ingest import read_report

    dags = REPO_ROOT / "dags"
    dag = BundleDagBag(dag_folder=str(dags), bundle_path=dags).get_dag("inbo_hourly")
    run = dag.test(
        run_after=world_end + timedelta(hours=6, minutes=51),
        logical_date=None,
        mark_success_pattern=r"(?!ingest$).*",
    )
    assert str(run.state) == "success"
    last_hour = world_end + timedelta(hours=6)
    report = read_report(Lake(live_redis.lake), batch_key(last_hour))
    assert report.batch == batch_key(last_hour) and sum(report.extracted.values()) > 0


def test_demo_command_runs_the_dags_through_an_airflow_scheduler(settings: Settings) -> None:
    """`inbo demo` end to end in a subprocess: simulate, Airflow's services, the runs triggered
    through the REST API and reported task by task, read back; no Airflow process outlives it."""
    inbo = str(Path(sys.executable).with_name("inbo"))
    env = {**os.environ, "INBO_VAR_DIR": str(settings.var_dir)}
    out = subprocess.run(
        [inbo, "demo", "--users", "300", "--items", "60", "--days", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    from inbo.services import stop_redis

    stop_redis(settings)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "inbo_nightly succeeded" in out.stdout
    assert re.search(r"^  activate_version +success +\d+\.\d s$", out.stderr, re.MULTILINE)
    assert "personal, table" in out.stdout
    assert "Where to look next" in out.stdout
    assert not airflow_processes_under(settings.var_dir)


def airflow_processes_under(var_dir: Path) -> list[int]:
    """Processes whose environment points INBO_VAR_DIR at `var_dir`: the demo's Airflow."""
    marker = f"INBO_VAR_DIR={var_dir}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found
