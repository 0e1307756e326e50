"""`inbo airflow`'s environment: one set of secrets for every Airflow component, kept under var/."""

from __future__ import annotations

import sys
from pathlib import Path

from cli.airflow import airflow_env
from inbo.settings import Settings


def test_every_component_gets_the_same_secrets_generated_once(settings: Settings) -> None:
    first = airflow_env(settings)
    again = airflow_env(settings, port=9999)
    secrets_file = settings.var_dir / "airflow" / "secrets.json"
    for name in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert len(first[name]) > 40 and again[name] == first[name], name
    assert secrets_file.stat().st_mode & 0o777 == 0o600


def test_airflow_runs_from_the_venv_on_this_var_dir(settings: Settings) -> None:
    """`airflow standalone` and the task supervisors call `airflow` from PATH."""
    env = airflow_env(settings, port=8123)
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(f"sqlite:///{settings.var_dir}")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["INBO_VAR_DIR"] == str(settings.var_dir)
