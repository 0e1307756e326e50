"""`inbo airflow`: the Airflow UI and scheduler on this repo's DAGs, and what the demo shares with it.

Airflow runs as its own processes (api-server, scheduler, dag-processor), started with one
environment (`airflow_env`): this repo's airflow.cfg and DAGs, Airflow's state under the var dir,
the venv's bin on PATH, and a JWT secret and API secret key generated once under
`<var_dir>/airflow/secrets.json`. Every component must sign and check task tokens with the same
secret; without one each generates its own and every task fails with "Invalid auth token".

Runs are triggered and followed through Airflow's REST API, so this module never imports Airflow.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.app import app, err
from inbo.errors import InboError, ServiceUnavailable
from inbo.settings import REPO_ROOT, Settings, get_settings

SERVICES = ("api-server", "scheduler", "dag-processor")
"""What `airflow standalone` runs, less the triggerer: no task of ours defers."""

DEFAULT_PORT = 8080
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 1.0
FINISHED = {"success", "failed", "skipped", "upstream_failed", "removed"}


@app.command("airflow", rich_help_panel="Demo")
def airflow_ui(
    port: Annotated[int, typer.Option(help="Port of the UI and REST API.")] = DEFAULT_PORT,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 to reach it from outside).")
    ] = "127.0.0.1",
) -> None:
    """Start the Airflow UI, scheduler and DAG processor on this repo's DAGs until Ctrl-C.

    Every visitor is an admin (local development: no login). The scheduler runs the DAGs on
    their schedules once unpaused, and runs triggered from the UI."""
    settings = get_settings()
    with airflow_services(settings, port, host=host) as api:
        err.print(
            f"Airflow UI at {api.base_url} (Ctrl-C stops it; logs in {services_log_dir(settings)})"
        )
        api.wait_while_running()


def airflow_env(settings: Settings, port: int = DEFAULT_PORT) -> dict[str, str]:
    """The environment for an Airflow command: this repo's airflow.cfg and DAGs, with Airflow's
    own state (metadata DB, logs, secrets) under the settings' var dir, so a run on another var
    dir (a test's, a benchmark's) never touches the demo's. Values the caller set explicitly win,
    except the port, which is the caller's argument."""
    env = dict(os.environ)
    airflow_state = settings.var_dir / "airflow"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("AIRFLOW_HOME", str(REPO_ROOT))
    env.setdefault("AIRFLOW_CONFIG", str(REPO_ROOT / "airflow.cfg"))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", settings.airflow_db)
    env.setdefault("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(airflow_state / "logs"))
    env.setdefault(
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY",
        str(airflow_state / "logs" / "dag_processor"),
    )
    env.setdefault(
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(airflow_state / "passwords.json")
    )
    for name, value in airflow_secrets(airflow_state).items():
        env.setdefault(name, value)
    env["AIRFLOW__API__PORT"] = str(port)
    env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{port}"
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
    env["INBO_VAR_DIR"] = str(settings.var_dir)
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    return env


def airflow_secrets(airflow_state: Path) -> dict[str, str]:
    """The JWT secret and API secret key, generated on first use and kept (mode 0600), so the
    api-server, the scheduler and every restart agree on them."""
    path = airflow_state / "secrets.json"
    if not path.exists():
        airflow_state.mkdir(parents=True, exist_ok=True)
        values = {
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(48),
        }
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(values, indent=2) + "\n")
        temp.chmod(0o600)
        temp.replace(path)
    loaded: dict[str, str] = json.loads(path.read_text())
    return loaded


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def services_log_dir(settings: Settings) -> Path:
    return settings.var_dir / "airflow" / "logs" / "services"


def free_port() -> int:
    """A TCP port nobody listens on now: the demo's Airflow never collides with another."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def airflow_services(
    settings: Settings,
    port: int,
    host: str = "127.0.0.1",
    extra_env: dict[str, str] | None = None,
) -> Iterator[AirflowApi]:
    """Migrate the metadata DB, start SERVICES, yield a REST client once the API answers; stop
    them on the way out, also on SIGTERM (SIGTERM to each one's process group, SIGKILL after a
    grace period)."""
    env = {**airflow_env(settings, port), **(extra_env or {})}
    log_dir = services_log_dir(settings)
    log_dir.mkdir(parents=True, exist_ok=True)
    migrate = subprocess.run(
        [airflow_bin(), "db", "migrate"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if migrate.returncode != 0:
        raise InboError(f"`airflow db migrate` failed: {migrate.stderr.strip()[-500:]}")
    with ExitStack() as stack:
        processes = {}
        for service in SERVICES:
            args = ["--port", str(port), "--host", host] if service == "api-server" else []
            log = stack.enter_context((log_dir / f"{service}.log").open("a"))
            processes[service] = subprocess.Popen(
                [airflow_bin(), service, *args],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack.callback(_stop, processes)
        # `kill` as well as Ctrl-C stops the services: they run in their own sessions
        stack.callback(signal.signal, signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        api = AirflowApi(f"http://127.0.0.1:{port}", processes, log_dir)
        api.wait_until_up()
        yield api


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes.values():
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class TaskState:
    """One task instance as the REST API reports it."""

    name: str
    state: str
    duration: float | None


@dataclass
class AirflowApi:
    """Airflow's REST API as an admin (the simple auth manager's all-admins token)."""

    base_url: str
    processes: dict[str, subprocess.Popen[bytes]]
    log_dir: Path
    token: str = ""

    def wait_until_up(self) -> None:
        """Until the API answers; a service that exits meanwhile is an error naming its log."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.token = self._call("GET", "/auth/token")["access_token"]
                return
            except (OSError, ValueError):
                time.sleep(0.5)
        raise ServiceUnavailable(
            f"the Airflow API did not answer within {START_TIMEOUT_SECONDS:.0f} s; see {self.log_dir}"
        )

    def check_alive(self) -> None:
        for service, process in self.processes.items():
            if process.poll() is not None:
                raise ServiceUnavailable(
                    f"airflow {service} exited ({process.returncode}); see "
                    f"{self.log_dir / f'{service}.log'}"
                )

    def wait_while_running(self) -> None:
        """Block until a service exits (an error) or Ctrl-C."""
        while True:
            self.check_alive()
            time.sleep(POLL_SECONDS)

    def run_dag(self, dag_id: str, logical_date: datetime) -> str:
        """Unpause `dag_id` and queue its run for `logical_date`; a run that exists (the demo run
        twice in a day) is cleared, so the scheduler runs it again. Returns the run id."""
        self._wait_for_dag(dag_id)
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run_id = f"manual__{logical_date.isoformat()}"
        try:
            self._call(
                "POST",
                f"/api/v2/dags/{dag_id}/dagRuns",
                {"dag_run_id": run_id, "logical_date": logical_date.isoformat()},
            )
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/clear", {"dry_run": False})
        return run_id

    def _wait_for_dag(self, dag_id: str) -> None:
        """Until the DAG processor has parsed `dag_id` into the metadata DB."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self._call("GET", f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            time.sleep(POLL_SECONDS)
        raise ServiceUnavailable(f"Airflow did not load {dag_id}; see {self.log_dir}")

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> list[TaskState]:
        """The run's task instances, mapped ones as `task[index]`, in start order."""
        found = self._call(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000&order_by=start_date",
        )["task_instances"]
        return [
            TaskState(
                name=ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""),
                state=ti["state"] or "none",
                duration=ti["duration"],
            )
            for ti in found
        ]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers,
            method=method,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")


def follow_run(api: AirflowApi, dag_id: str, run_id: str) -> str:
    """Report each task on stderr as it finishes or is retried (name, state, duration) while the
    scheduler runs `run_id`, with the running ones on a status line; the run's final state."""
    reported: set[tuple[str, str]] = set()
    started = time.monotonic()
    with err.status(f"{dag_id}: queued") as status:
        while True:
            api.check_alive()
            state = api.run_state(dag_id, run_id)
            tasks = api.task_states(dag_id, run_id)
            for task in tasks:
                if (
                    task.state in FINISHED | {"up_for_retry"}
                    and (task.name, task.state) not in reported
                ):
                    reported.add((task.name, task.state))
                    err.print(task_line(task))
            if state in ("success", "failed"):
                return state
            running = ", ".join(task.name for task in tasks if task.state == "running")
            status.update(
                f"{dag_id} {time.monotonic() - started:.0f} s: {running or 'waiting for the scheduler'}"
            )
            time.sleep(POLL_SECONDS)


def task_line(task: TaskState) -> str:
    colour = {"success": "green", "skipped": "dim", "up_for_retry": "yellow"}.get(task.state, "red")
    duration = f"{task.duration:6.1f} s" if task.duration is not None else ""
    return f"  {task.name:<24} [{colour}]{task.state:<15}[/{colour}] {duration}"
