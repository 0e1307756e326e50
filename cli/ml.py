"""`inbo` commands for ML engineers: the registry, promotion, explanations, offline evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.app import DateOption, app, console, interval_end

PANEL = "Models"


@app.command(rich_help_panel=PANEL)
def models() -> None:
    """Registered model versions with their aliases (champion, challenger)."""
    from inbo.settings import get_settings
    from pipelines.registry import list_models

    table = Table("model", "version", "aliases", "batch", "run")
    for row in list_models(get_settings()):
        table.add_row(row.model, str(row.version), ",".join(row.aliases), row.batch, row.run_id)
    console.print(table)


@app.command(rich_help_panel=PANEL)
def promote(
    model: Annotated[str, typer.Argument(help="als, reranker or popularity")],
    version: Annotated[int, typer.Argument(help="Registered version to make champion.")],
) -> None:
    """Point the `champion` alias at a version; the next publish uses it."""
    from mlflow.exceptions import MlflowException

    from inbo.errors import InboError
    from inbo.settings import get_settings
    from pipelines.registry import promote as set_champion
    from pipelines.registry import registered_name

    try:
        set_champion(get_settings(), model, version)
    except MlflowException:
        raise InboError(
            f"{registered_name(model)} has no version {version}; see `inbo models`"
        ) from None
    console.print(f"{registered_name(model)} version {version} is now champion")


@app.command(rich_help_panel=PANEL)
def explain(
    user_id: Annotated[int, typer.Argument()],
    item_id: Annotated[int, typer.Argument()],
    date: DateOption = None,
) -> None:
    """The reranker's per-feature contributions for one user and issue."""
    from pipelines.explain import explain_item

    found = explain_item(user_id, item_id, interval_end(date))
    placed = f"rank {found.rank}" if found.rank is not None else "not in the top N"
    console.print(
        f"user {found.user_id}, item {found.item_id}: score {found.score:.4f} ({placed}), "
        f"proposed by {found.proposed_by}; reason: {found.reason}"
    )
    table = Table("feature", "value", "contribution")
    for name, row in found.contributions.iterrows():
        table.add_row(str(name), f"{row['value']:.4g}", f"{row['contribution']:+.4f}")
    console.print(table)


@app.command(rich_help_panel=PANEL)
def evaluate(
    dataset: Annotated[
        str, typer.Option(help="demo (the lake's newest batch), movielens-100k, or mind.")
    ] = "demo",
    path: Annotated[
        Path | None, typer.Option(help="Folder of the dataset (movielens, mind).")
    ] = None,
    k: Annotated[int, typer.Option(min=1)] = 10,
) -> None:
    """Offline evaluation: popularity, content, ALS and ALS + reranker, one table, logged to MLflow."""
    from pipelines.offline.evaluate import format_table, run_benchmark

    print(format_table(run_benchmark(dataset, path, k=k)))
