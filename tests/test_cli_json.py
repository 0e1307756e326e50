"""docs/cli-json.md names every field each `--json` command prints: the documented shape is the
printed one (each command prints `cli.app.print_json` of the type listed here)."""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from typing import Any, get_type_hints

import pytest

from inbo.settings import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "cli-json.md").read_text()


def result_types() -> dict[str, list[Any]]:
    from features.embeddings import EmbeddingStats
    from features.interactions import InteractionStats
    from pipelines.demo.simulate import SimulationSummary
    from pipelines.experiments.lifecycle import ExperimentState
    from pipelines.experiments.statistics import MetricResult, SampleRatio
    from pipelines.health import Health, LiveTable
    from pipelines.hourly import HourlyPublish, HourlyScore, RefreshRun
    from pipelines.ingest import IngestReport
    from pipelines.monitoring.dashboard import Dashboard
    from pipelines.monitoring.health import Check, HealthReport
    from pipelines.promotion import Decision
    from pipelines.publish.lifecycle import VersionInfo
    from pipelines.publish.reader import SimilarItem, SimilarItems
    from pipelines.publish.steps import Published
    from pipelines.reconcile import ReconcileReport
    from pipelines.score import ScoreSummary
    from pipelines.train import TrainedModels
    from pipelines.validate import ValidationReport

    return {
        "inbo status --json": [Health, LiveTable],
        "inbo health --json": [HealthReport, Check],
        "inbo dashboard --json": [Dashboard],
        "inbo similar ITEM --json": [SimilarItems, SimilarItem],
        "inbo versions --json": [VersionInfo],
        "inbo simulate --json": [SimulationSummary],
        "inbo ingest --json": [IngestReport],
        "inbo validate --json": [ValidationReport],
        "inbo features --json": [InteractionStats],
        "inbo embed --json": [EmbeddingStats],
        "inbo train --json": [TrainedModels],
        "inbo gate --json": [Decision],
        "inbo score --json": [ScoreSummary],
        "inbo publish --json": [Published],
        "inbo refresh --json": [RefreshRun, HourlyScore, HourlyPublish],
        "inbo reconcile --json": [ReconcileReport],
        "inbo experiment start NAME --json": [ExperimentState],
        "inbo experiment report NAME --json": [MetricResult, SampleRatio],
    }


def field_names(kind: Any) -> list[str]:
    if is_dataclass(kind):
        return [f.name for f in fields(kind)]
    return list(get_type_hints(kind))  # a TypedDict


def section(heading: str) -> str:
    match = re.search(rf"^### `{re.escape(heading)}`.*?$(.*?)(?=^##)", DOC, re.M | re.S)
    assert match, f"docs/cli-json.md has no section for `{heading}`"
    return match.group(1)


@pytest.mark.parametrize("heading", list(result_types()))
def test_the_doc_names_every_field_the_command_prints(heading: str) -> None:
    text = section(heading)
    missing = [
        name
        for kind in result_types()[heading]
        for name in field_names(kind)
        if f"`{name}`" not in text
    ]
    assert missing == []
