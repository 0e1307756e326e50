"""`inbo models`, `inbo promote`, `inbo explain --json`, `inbo evaluate --json`: one vocabulary of
model names, confirmation before moving the production alias, one line of output, JSON shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from test_cli import run
from test_registry import register_one

from cli.ml import benchmark_record, explanation_record
from inbo.settings import Settings
from pipelines import promotion, registry
from pipelines.explain import Explanation


def two_versions(settings: Settings, tmp_path: Path) -> tuple[int, int]:
    """ALS v1 champion (gated), v2 challenger kept by the gate."""
    first = register_one(settings, tmp_path, "b1")
    promotion.gate(settings, "als", first, 0.40, None, margin=0.01)
    second = register_one(settings, tmp_path, "b2", seed=1)
    promotion.gate(settings, "als", second, 0.10, 0.40, margin=0.01)
    return first, second


def test_models_lists_the_names_promote_takes(settings: Settings, tmp_path: Path) -> None:
    first, second = two_versions(settings, tmp_path)
    result = run("models", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert [(row["model"], row["version"]) for row in rows] == [("als", second), ("als", first)]
    assert rows[0] == {
        "model": "als",
        "registered_name": "inbo-als",
        "version": second,
        "aliases": ["challenger"],
        "run_id": rows[0]["run_id"],
        "batch": "b2",
        "decision": "kept",
    }
    assert rows[1]["aliases"] == ["champion"] and rows[1]["decision"] == "promoted"
    table = run("models").stdout
    assert "als" in table and "inbo-als" in table


def test_promote_confirms_moves_the_alias_and_says_so_once(
    settings: Settings, tmp_path: Path
) -> None:
    first, second = two_versions(settings, tmp_path)
    refused = run("promote", "als", str(second))  # no terminal, no --yes
    assert refused.returncode != 0 and "without --yes" in refused.stderr
    assert registry.alias_version(settings, "als", registry.CHAMPION) == first

    done = run("promote", "als", str(second), "--yes")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"als version {second} is champion (was {first})"
    assert "champion" not in done.stderr  # the message is printed once, not logged as well
    assert registry.alias_version(settings, "als", registry.CHAMPION) == second

    again = run("promote", "als", str(first), "--yes", "--json")
    assert json.loads(again.stdout) == {"model": "als", "version": first, "previous": second}


def test_promote_rejects_what_is_never_registered(settings: Settings, tmp_path: Path) -> None:
    register_one(settings, tmp_path, "b1")
    for name in ("popularity", "inbo-als"):
        result = run("promote", name, "1", "--yes")
        assert result.returncode == 2 and "als" in result.stderr and "reranker" in result.stderr
    missing = run("promote", "reranker", "1", "--yes")
    assert missing.returncode != 0
    assert "error: inbo-reranker has no version 1; see `inbo models`" in missing.stderr


def test_explain_json_shape() -> None:
    found = Explanation(
        user_id=7, item_id=42, score=0.5, rank=None, proposed_by="als", reason="because",
        contributions=pd.DataFrame(
            {"value": [1.0, np.nan], "contribution": [0.4, 0.1]}, index=["subscribed", "bias"]
        ),
    )  # fmt: skip
    record = json.loads(json.dumps(explanation_record(found)))
    assert record == {
        "user_id": 7,
        "item_id": 42,
        "score": 0.5,
        "rank": None,
        "proposed_by": "als",
        "reason": "because",
        "contributions": [
            {"feature": "subscribed", "value": 1.0, "contribution": 0.4},
            {"feature": "bias", "value": None, "contribution": 0.1},
        ],
    }


def test_evaluate_json_names_metrics_by_k() -> None:
    table = pd.DataFrame(
        {"ndcg_at_k": [0.3, 0.1], "map": [0.2, np.nan], "fit_seconds": [1.5, 0.1]},
        index=pd.Index(["als", "popularity"], name="model"),
    )
    table.attrs.update(dataset="demo", split="time/2026-11-18T00:00+48h", k=5)
    record = json.loads(json.dumps(benchmark_record(table)))
    assert record == {
        "dataset": "demo",
        "split": "time/2026-11-18T00:00+48h",
        "k": 5,
        "models": [
            {"model": "als", "ndcg_at_5": 0.3, "map": 0.2, "fit_seconds": 1.5},
            {"model": "popularity", "ndcg_at_5": 0.1, "map": None, "fit_seconds": 0.1},
        ],
    }
