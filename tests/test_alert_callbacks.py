"""Airflow's failure and deadline alerts reach a webhook as Slack-compatible JSON, and only log
when it is down, without hiding the task's own error.

The DAGs here are tiny probes in a temporary dags folder, next to a copy of `dags/common.py`: the
same callbacks the real DAGs use, run by real Airflow on a throw-away metadata DB.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cli.airflow import airflow_bin, airflow_env, airflow_services, free_port
from inbo.settings import REPO_ROOT, Settings
from pipelines.monitoring.notify import (
    ERROR_CHARS,
    Alert,
    Severity,
    one_line,
    payload,
    send_alert,
)

ERROR = "the lake partition 2026-11-20 is empty"

FAILING_DAG = f'''
import pendulum
from airflow.sdk import dag, task

from common import run_deadline, run_failed, task_failed


@dag(
    dag_id="alert_probe",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    default_args={{"retries": 0, "on_failure_callback": task_failed}},
    on_failure_callback=run_failed,
    deadline=run_deadline(60),
)
def alert_probe():
    @task
    def breaks():
        raise ValueError("{ERROR}")

    breaks()


alert_probe()
'''

LATE_DAG = """
import time

import pendulum
from airflow.sdk import dag, task

from common import run_deadline, run_failed, task_failed


@dag(
    dag_id="late_probe",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    default_args={"retries": 0, "on_failure_callback": task_failed},
    on_failure_callback=run_failed,
    deadline=run_deadline(1 / 60),
)
def late_probe():
    @task
    def takes_its_time():
        time.sleep(30)

    takes_its_time()


late_probe()
"""


class Receiver:
    """A chat webhook on localhost: records every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000/secret"

    def wait_for(self, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.received


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def probe_dags(folder: Path, **dags: str) -> Path:
    """A dags folder with the repo's `common.py` and the given probe DAG files."""
    folder.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dags" / "common.py", folder / "common.py")
    for name, source in dags.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder


@pytest.fixture(scope="module")
def empty_airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty metadata DB (SQLite), made once and copied by each test that runs a DAG."""
    var_dir = tmp_path_factory.mktemp("airflow-db") / "var"
    env = airflow_env(Settings(var_dir=var_dir))
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True)
    return var_dir / "airflow" / "airflow.db"


def dags_test(
    settings: Settings, empty_db: Path, dags: Path, webhook: str
) -> subprocess.CompletedProcess[str]:
    """`airflow dags test alert_probe` on a copy of `empty_db` under the test's var dir."""
    env = {
        **airflow_env(settings),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "INBO_ALERT_WEBHOOK_URL": webhook,
    }
    shutil.copy(empty_db, settings.var_dir / "airflow" / "airflow.db")
    return subprocess.run(
        [airflow_bin(), "dags", "test", "alert_probe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_payload_is_slack_compatible_and_its_text_says_it_all() -> None:
    alert = Alert(
        title="Airflow task failed",
        severity=Severity.CRITICAL,
        dag="inbo_nightly",
        task="score_shard[3]",
        run="scheduled__2026-11-20T00:00:00+00:00",
        try_number=3,
        error="ValueError: no champion",
        log_url="http://localhost:8080/dags/inbo_nightly/runs/r/tasks/score_shard",
        when=datetime(2026, 11, 21, 1, 2, tzinfo=UTC),
    )
    body = json.loads(json.dumps(payload(alert)))
    for part in ("inbo_nightly.score_shard[3]", alert.run, "try 3", alert.error, "critical"):
        assert part in body["text"], part
    assert body["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Airflow task failed"},
    }
    assert all(block["type"] in {"header", "section"} for block in body["blocks"])
    fields = [field["text"] for field in body["blocks"][1]["fields"]]
    assert "*Task*\nscore_shard[3]" in fields and "*Try*\n3" in fields
    assert f"<{alert.log_url}|Task log>" in json.dumps(body["blocks"])


def test_a_run_level_alert_has_no_task_fields() -> None:
    alert = Alert(
        title="Airflow run past its deadline",
        severity=Severity.WARNING,
        dag="inbo_hourly",
        run="manual__1",
        when=datetime(2026, 11, 21, tzinfo=UTC),
    )
    body = payload(alert)
    assert body["text"] == "[warning] Airflow run past its deadline: inbo_hourly run manual__1"
    names = [field["text"].split("\n")[0] for field in body["blocks"][1]["fields"]]
    assert names == ["*DAG*", "*Run*", "*When*", "*Severity*"]
    assert len(body["blocks"]) == 2  # no error, no log link


def test_an_error_becomes_one_short_line() -> None:
    assert one_line(ValueError("bad\n  row 3")) == "ValueError: bad row 3"
    assert one_line(None) == ""
    long = one_line("x" * 1000)
    assert len(long) == ERROR_CHARS and long.endswith("…")


def test_send_alert_posts_only_when_a_webhook_is_set(tmp_path: Path, receiver: Receiver) -> None:
    alert = Alert("Airflow run failed", Severity.CRITICAL, "inbo_hourly", "r1", datetime.now(UTC))
    assert send_alert(alert, Settings(var_dir=tmp_path)) is False
    assert send_alert(alert, Settings(var_dir=tmp_path, alert_webhook_url=receiver.url)) is True
    assert receiver.received == [payload(alert)]


def dags_common() -> Any:
    sys.path.insert(0, str(REPO_ROOT / "dags"))
    try:
        import common
    finally:
        sys.path.remove(str(REPO_ROOT / "dags"))
    return common


def test_a_deadline_of_zero_minutes_is_none_and_others_start_at_the_queued_time() -> None:
    """0 turns the deadline off (foreground runs: Airflow 3.3.2's dag.test() cannot prune one)."""
    common = dags_common()
    assert common.run_deadline(0) is None
    alert = common.run_deadline(240)
    assert alert.interval.total_seconds() == 240 * 60
    assert alert.reference.reference_name == "DagRunQueuedAtDeadline"
    assert alert.callback.kwargs == {"minutes": 240}


def test_a_run_failed_by_a_task_only_logs_and_one_failed_otherwise_alerts(
    settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DAG-level callback's context as `DagRun.execute_dag_callbacks` builds it without a
    failed task (`dag`, `run_id`, `reason`): a run that timed out has no task alert to rely on."""
    common = dags_common()
    monkeypatch.setattr(settings, "alert_webhook_url", receiver.url)
    dag = SimpleNamespace(dag_id="inbo_nightly")
    common.run_failed({"dag": dag, "run_id": "scheduled__1", "reason": "task_failure"})
    assert receiver.received == []
    common.run_failed({"dag": dag, "run_id": "scheduled__1", "reason": "timed_out"})
    assert [message["text"] for message in receiver.received] == [
        "[critical] Airflow run failed: inbo_nightly run scheduled__1: timed_out"
    ]


def test_a_deadline_missed_by_a_failed_run_only_logs(
    settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline context as `Deadline.handle_miss` builds it (the run as the REST API shows it,
    and the deadline). Airflow prunes deadlines only of runs that succeeded, so a failed run's
    deadline still fires; its failure has alerted already."""
    common = dags_common()
    monkeypatch.setattr(settings, "alert_webhook_url", receiver.url)
    context: dict[str, Any] = {
        "dag_run": {
            "dag_id": "inbo_hourly",
            "dag_run_id": "scheduled__2026-11-20T05:00:00+00:00",
            "state": "failed",
            "queued_at": "2026-11-20T06:00:01+00:00",
        },
        "deadline": {"id": "d1", "deadline_time": "2026-11-20T06:45:01+00:00"},
    }
    common.deadline_missed(context, minutes=45)
    assert receiver.received == []
    context["dag_run"]["state"] = "running"
    common.deadline_missed(context, minutes=45)
    assert receiver.received[0]["text"] == (
        "[warning] Airflow run past its deadline: inbo_hourly run "
        "scheduled__2026-11-20T05:00:00+00:00: still running 45 min after it was queued "
        "(2026-11-20T06:00:01+00:00)"
    )


@pytest.mark.e2e
def test_a_failed_task_posts_one_message_with_its_dag_task_error_and_run(
    settings: Settings, receiver: Receiver, empty_airflow_db: Path, tmp_path: Path
) -> None:
    """The task's callback alerts; the run's own failure callback sees reason `task_failure` and
    only logs, so one failure is one message."""
    dags = probe_dags(tmp_path / "dags", alert_probe=FAILING_DAG)
    out = dags_test(settings, empty_airflow_db, dags, receiver.url)
    assert f"ValueError: {ERROR}" in out.stdout + out.stderr
    messages = receiver.wait_for(1, timeout=5)
    assert len(messages) == 1, messages
    text = messages[0]["text"]
    for part in ("Airflow task failed", "alert_probe.breaks", f"ValueError: {ERROR}", "manual__"):
        assert part in text, (part, text)
    assert "/dags/alert_probe/runs/manual__" in text  # the task log's link
    assert messages[0]["blocks"][0]["text"]["text"] == "Airflow task failed"


@pytest.mark.e2e
def test_with_the_receiver_down_the_task_fails_with_its_own_error_and_the_alert_is_logged(
    settings: Settings, empty_airflow_db: Path, tmp_path: Path
) -> None:
    dags = probe_dags(tmp_path / "dags", alert_probe=FAILING_DAG)
    nobody = f"http://127.0.0.1:{free_port()}/hooks/T000/B000/secret"
    out = dags_test(settings, empty_airflow_db, dags, nobody)
    logs = out.stdout + out.stderr
    assert f"ValueError: {ERROR}" in logs
    assert "alert [critical] Airflow task failed: alert_probe.breaks" in logs
    assert "alert webhook http://127.0.0.1:" in logs and "failed after 3 tries" in logs
    assert "secret" not in logs.split("alert webhook", 1)[1].split("\n", 1)[0]  # path redacted
    assert "Callback failed" not in logs and "Error when executing" not in logs


@pytest.mark.e2e
def test_a_run_past_its_deadline_posts_a_warning_through_the_scheduler(
    settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    """Deadline alerts need the scheduler (it finds missed deadlines) and an executor (it runs the
    `SyncCallback`): a run with a one-second deadline whose task sleeps 30 s, on real services."""
    dags = probe_dags(tmp_path / "dags", late_probe=LATE_DAG)
    extra = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "INBO_ALERT_WEBHOOK_URL": receiver.url}
    with airflow_services(settings, free_port(), extra_env=extra) as api:
        run_id = api.run_dag("late_probe", datetime.now(UTC))
        messages = list(receiver.wait_for(1, timeout=90))  # stopping kills the task: it alerts too
        state = api.run_state("late_probe", run_id)
    assert len(messages) == 1, messages
    text = messages[0]["text"]
    assert text.startswith("[warning] Airflow run past its deadline: late_probe run "), text
    assert run_id in text and "min after it was queued" in text
    assert state in {"queued", "running"}  # the alert came while the run was still going
