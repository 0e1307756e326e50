"""DAG integrity: every DAG imports cleanly, cheaply, offline, and follows the house rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from inbo.settings import REPO_ROOT, get_settings

HEAVY = (
    "pandas",
    "pyarrow",
    "torch",
    "great_expectations",
    "mlflow",
    "redis",
    "lightgbm",
    "implicit",
    "sklearn",
)

PARSE_PROBE = r"""
import json, socket, sys

attempts = []

def refuse(self, address, *args, **kwargs):
    attempts.append(str(address))
    raise OSError("network is off during DAG parsing")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = lambda address, *a, **k: refuse(None, address)

from pathlib import Path

from airflow.dag_processing.dagbag import BundleDagBag

bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=Path(sys.argv[1]))
before = set(sys.modules)
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dag_ids),
    "modules": sorted(sys.modules),
    "connections": attempts,
}))
"""


@pytest.fixture(scope="module")
def parsed() -> dict[str, object]:
    """Parse dags/ in a fresh interpreter with sockets disabled, as the DAG processor would (a
    bundle DagBag: dags/ is on sys.path, so DAG files import `common` from it)."""
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(REPO_ROOT / "dags")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dagbag_has_no_import_errors(parsed: dict) -> None:
    assert parsed["errors"] == {}
    assert "inbo_nightly" in parsed["dags"]


def test_parsing_imports_no_heavy_library(parsed: dict) -> None:
    loaded = {name.split(".")[0] for name in parsed["modules"]}
    assert sorted(loaded.intersection(HEAVY)) == []


def test_parsing_makes_no_connections(parsed: dict) -> None:
    assert parsed["connections"] == []


@pytest.fixture(scope="module")
def dags() -> dict:
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(REPO_ROOT / "dags"), bundle_path=REPO_ROOT / "dags").dags


def test_every_dag_has_tags_retries_docs_and_its_file_name(dags: dict) -> None:
    for dag_id, dag in dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md, dag_id
        assert Path(dag.fileloc).stem == dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id}"


def test_nightly_runs_its_steps_in_order(dags: dict) -> None:
    dag = dags["inbo_nightly"]
    order = [
        "ingest",
        "validate",
        "build_interactions",
        "build_embeddings",
        "fit_baselines",
        "train_reranker",
        "evaluate_holdout",
        "register_and_gate",
        "prepare_scoring",
        "score_shard",
        "begin_publish",
        "publish_shards",
        "verify_version",
        "activate_version",
    ]
    for upstream, downstream in pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)


def test_nightly_scores_per_shard_and_publishes_per_redis_writer(dags: dict) -> None:
    """Score shards fan out by dynamic task mapping; publish fans out over `INBO_PUBLISH_PARALLEL`
    writers (default 1), each staging its share of the shards; the pointer waits for all."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = dags["inbo_nightly"]
    for task_id in ("score_shard", "publish_shards"):
        assert isinstance(dag.get_task(task_id), MappedOperator), task_id
    writers = get_settings().publish_parallel  # 1 unless INBO_PUBLISH_PARALLEL says otherwise
    assert dag.get_task("publish_shards").op_kwargs_expand_input.value == {
        "writer": list(range(writers))
    }
    assert dag.get_task("publish_shards").partial_kwargs["op_kwargs"]["writers"] == writers
    assert dag.get_task("verify_version").upstream_task_ids >= {"publish_shards", "begin_publish"}
    assert dag.get_task("activate_version").upstream_task_ids == {"verify_version"}


def test_dag_files_have_no_airflow2_leftovers() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run(
        [
            str(ruff),
            "check",
            "--select",
            "AIR3",
            "--output-format",
            "concise",
            str(REPO_ROOT / "dags"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout


def test_hourly_refreshes_after_features_and_reconciles_after_validation(dags: dict) -> None:
    dag = dags["inbo_hourly"]
    assert dag.get_task("validate").upstream_task_ids == {"ingest"}
    assert dag.get_task("score_active_users").upstream_task_ids == {
        "build_activity",
        "embed_new_items",
    }
    assert dag.get_task("publish_active_users").upstream_task_ids == {"score_active_users"}
    assert dag.get_task("reconcile_counters").upstream_task_ids == {"validate"}
    assert dag.params["repair_counters"] is False  # report mode unless a run asks for repair


def test_the_hourly_schedule_comes_from_the_settings() -> None:
    """`INBO_HOURLY_SCHEDULE` is read when the DAG file is parsed; nothing assumes an hour."""
    env = {**os.environ, "INBO_HOURLY_SCHEDULE": "*/10 * * * *"}
    probe = (
        "import sys; from pathlib import Path; "
        "from airflow.dag_processing.dagbag import BundleDagBag; "
        "dag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=Path(sys.argv[1]).parent)"
        ".dags['inbo_hourly']; "
        "print(dag.timetable.expression)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(REPO_ROOT / "dags" / "inbo_hourly.py")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "*/10 * * * *"


def test_a_run_without_data_interval_takes_the_last_tick_at_or_before_run_after() -> None:
    """A REST trigger without a logical date has no data interval in Airflow 3; its batch ends at
    the schedule's last tick (`common.batch_end`), a tick itself included."""
    sys.path.insert(0, str(REPO_ROOT / "dags"))
    try:
        from common import last_tick
    finally:
        sys.path.remove(str(REPO_ROOT / "dags"))
    at = datetime(2026, 11, 20, 6, 51, 30, tzinfo=UTC)
    assert last_tick("0 0 * * *", at) == datetime(2026, 11, 20, tzinfo=UTC)
    assert last_tick("0 0 * * *", datetime(2026, 11, 20, tzinfo=UTC)) == datetime(
        2026, 11, 20, tzinfo=UTC
    )
    assert last_tick("*/10 * * * *", at) == datetime(2026, 11, 20, 6, 50, tzinfo=UTC)
