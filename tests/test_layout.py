"""The layout's rules, read from the code's own imports: nothing imports upward, Airflow stays in
`dags/`, production never imports the offline benchmarks or the demo simulator, and every DAG task
calls the library function of its own name (or its locked `_exclusive` form)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from inbo.settings import REPO_ROOT

LAYERS = {"inbo": 0, "features": 1, "models": 1, "validation": 1, "pipelines": 2, "cli": 3}
"""Lower numbers are lower floors: a module may import its own floor and the floors below."""
OUTSIDE_PRODUCTION = ("pipelines.offline", "pipelines.demo")
"""What only the CLI, tests and notebooks may import (the benchmarks, the simulated app)."""


def library_modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(p for p in parts if p != "__init__")] = path
    return found


def imported(path: Path) -> list[str]:
    """Every module name `path` imports, at the top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def layer(module: str) -> int | None:
    return LAYERS.get(module.split(".")[0])


MODULES = library_modules()


def test_the_layers_are_all_read() -> None:
    assert {"inbo.settings", "models.als", "pipelines.publish.versions", "cli.main"} <= set(MODULES)


def test_no_import_runs_back_up_a_floor() -> None:
    upward = {
        module: found
        for module, path in MODULES.items()
        if (found := [n for n in imported(path) if (layer(n) or 0) > (layer(module) or 0)])
    }
    assert upward == {}


def test_only_dags_import_airflow() -> None:
    airflow = [
        m
        for m, path in MODULES.items()
        if any(n.split(".")[0] == "airflow" for n in imported(path))
    ]
    assert airflow == []


def test_production_steps_never_import_benchmarks_or_the_demo() -> None:
    production = {
        m: p
        for m, p in MODULES.items()
        if m.startswith("pipelines") and not m.startswith(OUTSIDE_PRODUCTION)
    }
    found = {
        module: names
        for module, path in production.items()
        if (names := [n for n in imported(path) if n.startswith(OUTSIDE_PRODUCTION)])
    }
    assert found == {}


def dag_tasks(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Each `@task` function of a DAG file and the library names its body imports."""
    tasks = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and any(
            (isinstance(d, ast.Name) and d.id == "task")
            or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "task")
            for d in node.decorator_list
        ):
            tasks[node.name] = [
                (sub.module or "", alias.name)
                for sub in ast.walk(node)
                if isinstance(sub, ast.ImportFrom)
                for alias in sub.names
            ]
    return tasks


@pytest.mark.parametrize("dag_file", sorted((REPO_ROOT / "dags").glob("inbo_*.py")))
def test_every_task_calls_the_library_function_of_its_name(dag_file: Path) -> None:
    tasks = dag_tasks(dag_file)
    assert tasks, f"no tasks found in {dag_file.name}"
    for name, imports in tasks.items():
        called = [item for _, item in imports]
        assert len(called) == 1 and (called[0] == name or called[0].startswith(f"{name}_")), (
            f"task {name} of {dag_file.name} imports {imports}; it should import one function "
            "called like the task (`ingest` may call `ingest_exclusive`, its locked form)"
        )
        module = imports[0][0]
        assert layer(module) is not None and module in MODULES, f"{name} imports {module}"
