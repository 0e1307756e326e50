"""`inbo` commands for ML engineers: the registry, promotion, explanations, offline evaluation.

Models are named by kind (`als`, `reranker`) everywhere: `inbo models` lists them so and
`inbo promote` takes them so; MLflow registers them as `inbo-als`, `inbo-reranker`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli.app import DateOption, JsonOption, app, confirm, console, interval_end, print_json
from pipelines.offline.names import Dataset
from pipelines.registry import ModelKind

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.explain import Explanation

PANEL = "Models"


@app.command(rich_help_panel=PANEL)
def models(as_json: JsonOption = False) -> None:
    """Registered model versions: aliases (champion, challenger), batch, the gate's decision."""
    from inbo.settings import get_settings
    from pipelines.registry import list_models

    rows = list_models(get_settings())
    if as_json:
        print_json(rows)
        return
    table = Table("model", "version", "aliases", "batch", "gate", "MLflow name", "run")
    for row in rows:
        table.add_row(
            row.model,
            str(row.version),
            ",".join(row.aliases),
            row.batch,
            row.decision,
            row.registered_name,
            row.run_id,
        )
    console.print(table)


@app.command(rich_help_panel=PANEL)
def promote(
    model: Annotated[ModelKind, typer.Argument(help="The model, as `inbo models` lists it.")],
    version: Annotated[
        int, typer.Argument(min=1, help="Registered version to make champion (`inbo models`).")
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Promote without asking.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Point the `champion` alias at a version: the next nightly publish serves it."""
    from inbo.settings import get_settings
    from pipelines import registry

    settings = get_settings()
    registry.resolve(settings, model, str(version))
    previous = registry.alias_version(settings, model, registry.CHAMPION)
    if previous != version:
        now = f"version {previous}" if previous is not None else "none"
        confirm(f"make {model} version {version} champion (now {now})", yes)
        registry.promote(settings, model, version)
    if as_json:
        print_json({"model": model, "version": version, "previous": previous})
        return
    console.print(f"{model} version {version} is champion (was {previous or 'none'})")


@app.command(rich_help_panel=PANEL)
def explain(
    user_id: Annotated[int, typer.Argument(help="The user whose list to explain.")],
    item_id: Annotated[int, typer.Argument(help="The issue to explain for that user.")],
    date: DateOption = None,
    as_json: JsonOption = False,
) -> None:
    """The reranker's per-feature contributions for one user and issue."""
    from pipelines.explain import explain_item

    found = explain_item(user_id, item_id, interval_end(date))
    if as_json:
        print_json(explanation_record(found))
        return
    placed = f"rank {found.rank}" if found.rank is not None else "not in the top N"
    console.print(
        f"user {found.user_id}, item {found.item_id}: score {found.score:.4f} ({placed}), "
        f"proposed by {found.proposed_by}; reason: {found.reason}"
    )
    table = Table("feature", "value", "contribution")
    for name, row in found.contributions.iterrows():
        table.add_row(str(name), f"{row['value']:.4g}", f"{row['contribution']:+.4f}")
    console.print(table)


def explanation_record(found: Explanation) -> dict[str, Any]:
    """`inbo explain --json`: the explanation with its contributions as a list, largest first."""
    return {
        "user_id": found.user_id,
        "item_id": found.item_id,
        "score": found.score,
        "rank": found.rank,
        "proposed_by": found.proposed_by,
        "reason": found.reason,
        "contributions": [
            {"feature": str(name), **finite(row.to_dict())}
            for name, row in found.contributions.iterrows()
        ],
    }


@app.command(rich_help_panel=PANEL)
def evaluate(
    dataset: Annotated[
        Dataset,
        typer.Option(
            help="demo (the lake's newest batch), movielens-100k, or mind (needs --path)."
        ),
    ] = Dataset.DEMO,
    path: Annotated[
        Path | None, typer.Option(help="Folder of the dataset (movielens-100k, mind).")
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="List length the metrics score.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Offline evaluation: popularity, content, ALS and ALS + reranker, one table, logged to MLflow."""
    from pipelines.offline.evaluate import format_table, run_benchmark

    table = run_benchmark(dataset, path, k=k)
    if as_json:
        print_json(benchmark_record(table))
        return
    print(format_table(table))


def benchmark_record(table: pd.DataFrame) -> dict[str, Any]:
    """`inbo evaluate --json`: one row per model, metrics under their MLflow names (`ndcg_at_10`)."""
    from pipelines.tracking import metric_key

    k = int(table.attrs["k"])
    return {
        "dataset": table.attrs["dataset"],
        "split": table.attrs["split"],
        "k": k,
        "models": [
            {"model": str(name), **finite({metric_key(str(c), k): v for c, v in row.items()})}
            for name, row in table.iterrows()
        ],
    }


def finite(values: dict[Any, Any]) -> dict[Any, Any]:
    """NaN as null: JSON has no NaN."""
    return {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in values.items()
    }
