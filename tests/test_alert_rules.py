"""The Prometheus rules in monitoring/: valid, unit-tested by promtool, and written on metrics the
exporter really serves."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from inbo.settings import REPO_ROOT
from tests.test_exporter import get, published, serving  # noqa: F401  (fixture)

MONITORING = REPO_ROOT / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
NOT_YET_EXPOSED = {"inbo_stream_lag_entries": "the stream worker (its own issue) will serve it"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, check=False
    )


@needs_promtool
def test_the_rules_and_the_scrape_config_are_valid() -> None:
    rules = promtool("check", "rules", "alerts.yml")
    config = promtool("check", "config", "prometheus.yml")

    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_every_rule_fires_and_stays_silent_as_its_unit_tests_say() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr

    rules = set(re.findall(r"alert: (\w+)", (MONITORING / "alerts.yml").read_text()))
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts.test.yml").read_text()))
    assert rules == tested, f"rules without a unit test: {rules - tested}"


def test_every_metric_a_rule_uses_is_one_the_exporter_defines() -> None:
    code = "".join(
        (REPO_ROOT / "pipelines" / "monitoring" / name).read_text()
        for name in ("metrics.py", "exporter.py")
    )
    defined = set(re.findall(r'"(inbo_[a-z_]+)"', code))
    expressions = re.findall(r"expr: (.+)", (MONITORING / "alerts.yml").read_text())
    unquoted = re.sub(r'"[^"]*"', "", " ".join(expressions))  # label values name DAGs, not metrics
    used = set(re.findall(r"\binbo_[a-z_]+", unquoted))
    used = {name.removesuffix("_total") for name in used} - set(NOT_YET_EXPOSED)

    assert used and used <= defined, f"rules on metrics nobody serves: {used - defined}"


@needs_promtool
def test_a_real_scrape_passes_promtools_metric_lint(published) -> None:  # noqa: F811
    with serving(published) as exporter:
        _, text = get(f"{exporter.url}/metrics")
    assert PROMTOOL is not None
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )

    assert "inbo_live_table_users" in text
    assert lint.returncode == 0, lint.stdout + lint.stderr
