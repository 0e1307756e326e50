"""Every notebook runs top to bottom on a generated world, so none can rot."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from inbo.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.e2e

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.py"))


@pytest.fixture
def validated_world(world: Settings, world_end: datetime) -> Settings:
    from features.interactions import build_interactions
    from pipelines.ingest import ingest
    from pipelines.validate import validate_batch

    ingest(world_end)
    validate_batch(world_end)
    build_interactions(world_end)
    return world


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, validated_world: Settings, tmp_path: Path) -> None:
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    ]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), (
        "the notebook should draw its plots"
    )


def test_there_is_a_notebook() -> None:
    assert NOTEBOOKS, "notebooks/ should hold at least one jupytext notebook"
