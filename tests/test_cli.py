"""The CLI: user mistakes are one clear line and a non-zero exit; start-up stays light."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inbo.services import stop_redis
from inbo.settings import Settings

INBO = str(Path(sys.executable).with_name("inbo"))


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INBO, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in (
        "services",
        "simulate",
        "ingest",
        "validate",
        "publish",
        "rollback",
        "recs",
        "demo",
    ):
        assert command in result.stdout


REPORTS_NOTHING = {"demo", "play", "airflow", "exporter"}
"""Commands with no result to hand a script: the demo is a show for people, `play` writes its
results where the platform keeps them (the app DB, the lake, the experiment reports), `airflow`
runs the UI, `exporter` serves /metrics until stopped."""


def test_every_reporting_command_takes_json_and_every_option_has_help() -> None:
    import typer.main

    from cli.main import app

    def commands(group: Any, prefix: str = "") -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, command in group.commands.items():
            found[prefix + name] = command
            if hasattr(command, "commands"):  # a group: `inbo versions list`
                found.update(commands(command, f"{prefix}{name} "))
        return found

    every = commands(typer.main.get_group(app))
    assert every["status"] and every["versions list"]
    without_json = {
        name
        for name, command in every.items()
        if not any("--json" in param.opts for param in command.params)
        and not (hasattr(command, "commands") and not command.params)  # a bare group
    }
    assert without_json == REPORTS_NOTHING
    undocumented = [
        f"{name} {param.name}"
        for name, command in every.items()
        for param in command.params
        if param.param_type_name == "option" and not param.help
    ]
    assert undocumented == []


def test_start_up_imports_no_heavy_library() -> None:
    probe = (
        "import sys, cli.main; heavy = {'pandas', 'pyarrow', 'great_expectations', 'mlflow', 'torch', "
        "'airflow', 'redis', 'sqlalchemy'}; print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unreachable_redis_is_one_line_with_the_password_masked(settings: Settings) -> None:
    result = run("recs", "1", INBO_REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    assert result.returncode == 3
    line = one_error_line(result)
    assert "unreachable" in line and "hunter2" not in line


def test_bad_config_is_one_line(settings: Settings) -> None:
    result = run("recs", "1", INBO_TOP_N="lots")
    assert result.returncode == 2
    assert "INBO_TOP_N" in one_error_line(result)


def test_bad_redis_url_scheme_is_a_config_error(settings: Settings) -> None:
    result = run("recs", "1", INBO_REDIS_URL="http://localhost:6379")
    assert result.returncode == 2
    assert "INBO_REDIS_URL" in one_error_line(result)


def test_ingest_without_a_world_says_what_to_do(settings: Settings) -> None:
    result = run("ingest", "--date", "2026-11-20")
    assert result.returncode != 0
    assert "inbo simulate" in one_error_line(result)


def test_play_with_an_unknown_experiment_fails_before_simulating(settings: Settings) -> None:
    result = run("play", "--days", "1", "--users", "50", "--experiment", "no-such-test")
    assert result.returncode == 2
    assert "no experiment 'no-such-test'" in one_error_line(result)
    assert not (settings.var_dir / "app").exists()  # nothing was simulated


def test_report_of_an_experiment_never_started_is_one_line(settings: Settings) -> None:
    result = run("experiment", "report", "ranker-vs-popularity")
    assert result.returncode == 2
    assert "was never started" in one_error_line(result)


def test_a_malformed_date_is_a_usage_error(settings: Settings) -> None:
    result = run("ingest", "--date", "2026-13-01")
    assert result.returncode == 2
    assert "--date" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def published(world: Settings, live_redis: Settings, world_end) -> Settings:
    """The world run through every step with the same functions the CLI calls."""
    date, batch = f"{world_end:%Y-%m-%d}", f"{world_end:%Y%m%dT%H%MZ}"
    for command in ("ingest", "validate", "features", "train", "score", "publish"):
        result = run(command, "--date", date, "--json")
        assert result.returncode == 0, (command, result.stderr[-2000:])
        report = json.loads(result.stdout)  # one JSON document, nothing else on stdout
        assert (report[0] if isinstance(report, list) else report).get("batch", "") in {"", batch}
    return live_redis


@pytest.mark.e2e
def test_recs_for_known_unknown_and_rollback(published: Settings) -> None:
    from pipelines.publish.steps import sample_users

    user = sample_users(1, published)[0]
    shown = run("recs", str(user))
    assert shown.returncode == 0 and f"user {user}: personal" in shown.stdout

    unknown = run("recs", "987654321")
    assert unknown.returncode == 4
    assert "unknown user 987654321" in one_error_line(unknown)

    nothing_before = run("rollback")
    assert nothing_before.returncode == 1
    assert "nothing to roll back" in one_error_line(nothing_before)


# --- configuration and services that cannot work: one line, never a traceback or a hang ---


def test_a_redis_port_out_of_range_is_a_config_error(settings: Settings) -> None:
    result = run("recs", "1", INBO_REDIS_URL="redis://127.0.0.1:99999/0")
    assert result.returncode == 2
    assert "INBO_REDIS_URL" in one_error_line(result)


@pytest.mark.parametrize(
    ("lake_url", "says"),
    [("s3://bucket/lake", "s3fs"), ("nosuch://bucket/lake", "not a usable fsspec URL")],
)
def test_a_lake_url_that_cannot_be_opened_is_a_config_error(
    world: Settings, lake_url: str, says: str
) -> None:
    assert importlib.util.find_spec("s3fs") is None  # the case is a lake library not installed
    try:
        result = run("ingest", "--date", "2026-11-20", INBO_LAKE_URL=lake_url)
    finally:
        stop_redis(world)  # the ingest lock started the embedded server before the lake failed
    assert result.returncode == 2
    line = one_error_line(result)
    assert "INBO_LAKE_URL" in line and says in line


def test_a_var_dir_that_cannot_be_written_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # unwritable even for root, unlike a chmod
    result = run("simulate", "--users", "10", INBO_VAR_DIR=str(blocker / "var"))
    assert result.returncode == 2
    assert "INBO_VAR_DIR" in one_error_line(result)


def test_an_mlflow_that_never_answers_fails_fast(settings: Settings) -> None:
    """A server that accepts connections and never replies: before, MLflow retried for ~250 s."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        result = run("models", INBO_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    assert result.returncode == 3
    assert "MLflow at" in one_error_line(result)


def test_recs_works_for_a_read_only_acl_user(
    settings: Settings, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frontend's user that may only GET (no PING, no writes) reads its recommendations."""
    import redis
    from test_faults import NIGHT1, write_batch

    from pipelines.publish import steps

    monkeypatch.setenv("INBO_REDIS_URL", redis_server)
    writer = settings.model_copy(update={"redis_url": redis_server})
    recs = write_batch(writer, NIGHT1, seed=1)
    steps.publish_table(NIGHT1, writer)
    admin = redis.Redis.from_url(redis_server)
    admin.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+get"])
    try:
        host = redis_server.removeprefix("redis://")
        user = int(recs["user_id"].iloc[0])
        result = run("recs", str(user), "--json", INBO_REDIS_URL=f"redis://reader:pw@{host}")
    finally:
        admin.acl_deluser("reader")
        admin.close()
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout)
    expected = recs.loc[recs["user_id"] == user].sort_values("rank")["item_id"].tolist()
    assert payload["items"] == expected
