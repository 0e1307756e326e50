"""The project's promises about itself: imports resolve here, docs cover every setting."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

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


def pinned(path: str) -> dict[str, str]:
    """`name==version` lines of a requirements or constraints file, by normalised name."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found = {}
    for line in (REPO_ROOT / path).read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            requirement = Requirement(spec)
            found[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix(
                "=="
            )
    return found


def test_pyproject_declares_every_pinned_requirement_and_the_pins_satisfy_it() -> None:
    """pip install . and make install resolve the same versions: nothing declared but unpinned,
    nothing pinned but undeclared, every pin inside its declared range and in the constraints."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = [
        Requirement(spec)
        for spec in project["dependencies"]
        + [s for extra in project["optional-dependencies"].values() for s in extra]
    ]
    pins, resolved = pinned("requirements.txt"), pinned("constraints.txt")
    assert {canonicalize_name(r.name) for r in declared} == set(pins)
    for requirement in declared:
        pin = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pin), (requirement, pin)
    unresolved = {
        name: pin
        for name, pin in pins.items()
        if name != "torch" and resolved.get(name) != pin  # torch: the local CPU wheel, see header
    }
    assert unresolved == {}


def test_the_notebooks_open_with_what_the_project_installs() -> None:
    """JupyterLab with jupytext's server extension: the .py notebooks open as notebooks."""
    out = subprocess.run(
        [str(Path(sys.executable).with_name("jupyter")), "server", "extension", "list"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = (out.stdout + out.stderr).splitlines()
    assert any("jupyterlab_jupytext" in line and "enabled" in line for line in lines), lines
