"""The project's promises about itself: imports resolve here, docs cover every setting."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from inbo.settings import REPO_ROOT, Settings

PACKAGES = ("inbo", "pipelines", "models", "features", "validation")


@pytest.mark.parametrize("package", PACKAGES)
def test_top_level_packages_resolve_to_this_repo(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ == str(REPO_ROOT / package / "__init__.py")


def test_packages_resolve_here_from_any_working_directory(tmp_path) -> None:
    probe = "import pipelines, models, features, validation, inbo; print(pipelines.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().startswith(str(REPO_ROOT))


def test_readme_documents_every_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`INBO_{name.upper()}`" not in readme]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in (REPO_ROOT / "README.md").read_text()
