"""Evaluate and gate: challenger and champion compared on the same held-out window, then promoted.

The nightly DAG's `evaluate_holdout` and `register_and_gate` tasks. The last `holdout_days` of the
batch are held out; every model configuration is fitted on the data before them and scored on
what users clicked or read in them. The challenger is tonight's configuration, the champion is
the configuration (parameters) of the registered `champion`, both refitted on the same split, so
the comparison is fair whatever data each version first saw. `decide` is the gate's rule, a pure
function; `gate` applies it to the registry.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pandas as pd

from features.interactions import Recipe
from inbo import tables
from inbo.errors import InboError
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings
from models.als import ALSModel
from models.content import ContentModel
from models.evaluation import evaluate_model, time_split
from models.hybrid import HybridRecommender
from models.popularity import PopularityModel
from pipelines import registry
from pipelines.tracking import connect, log_step_run, step_run_id
from pipelines.training_data import load_training_data

log = logging.getLogger(__name__)

GATE_METRIC = "ndcg_at_k"
ALS_PARAMS = ("factors", "regularization", "alpha", "iterations", "weighting")
GATED = (("als", "als"), ("reranker", "hybrid"))
"""Each registered model kind and the held-out configuration whose score gates it."""


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """The gate's decision for one model kind, as the lake's gate report records it."""

    model: str
    challenger: int
    champion: int | None
    challenger_score: float | None
    champion_score: float | None
    margin: float
    promoted: bool
    reason: str


@dataclass(frozen=True)
class HeldOutScores:
    """nDCG@10 of every configuration on the batch's held-out window, by configuration name
    (`als`, `hybrid`, `als@champion`, ...); a configuration that could not be scored is absent."""

    batch: str
    scores: dict[str, float]


def decide(
    challenger_score: float | None,
    champion_score: float | None,
    has_champion: bool,
    margin: float,
) -> Verdict:
    """Promote the challenger unless it is worse than the champion by more than `margin`.

    Without a held-out score (too little data to evaluate) a challenger is promoted only when
    there is no champion at all: something must serve, and nothing says it is worse.
    """
    if not has_champion:
        return Verdict(True, "no champion yet: the first model is promoted")
    if challenger_score is None:
        return Verdict(False, "no held-out score for the challenger: the champion stays")
    if champion_score is None:
        return Verdict(True, "the champion configuration could not be scored on this window")
    if challenger_score >= champion_score - margin:
        return Verdict(
            True, f"challenger {challenger_score:.4f} >= champion {champion_score:.4f} - {margin}"
        )
    return Verdict(
        False, f"challenger {challenger_score:.4f} < champion {champion_score:.4f} - {margin}"
    )


def gate(
    settings: Settings,
    kind: str,
    challenger: int,
    challenger_score: float | None,
    champion_score: float | None,
    margin: float,
) -> Decision:
    """`decide` for a registered challenger version; moves `champion` to it when promoted."""
    champion = registry.alias_version(settings, kind, registry.CHAMPION)
    verdict = decide(challenger_score, champion_score, champion is not None, margin)
    if verdict.promoted:
        registry.promote(settings, kind, challenger)
    log.info("gate for %s: %s", registry.registered_name(kind), verdict.reason)
    return Decision(
        registry.registered_name(kind),
        challenger,
        champion,
        challenger_score,
        champion_score,
        margin,
        verdict.promoted,
        verdict.reason,
    )


def champion_als_params(settings: Settings) -> dict[str, Any] | None:
    """The ALS parameters the `champion` version was trained with, from its MLflow run."""
    if registry.alias_version(settings, "als", registry.CHAMPION) is None:
        return None
    client = connect(settings)
    version = client.get_model_version_by_alias(registry.registered_name("als"), registry.CHAMPION)
    logged = client.get_run(version.run_id).data.params
    types = {
        "factors": int,
        "iterations": int,
        "regularization": float,
        "alpha": float,
        "weighting": str,
    }
    return {name: types[name](logged[name]) for name in ALS_PARAMS if name in logged}


def configurations(
    settings: Settings, with_content: bool, champion: dict[str, Any] | None
) -> dict[str, Any]:
    """Every model to evaluate tonight, as zero-argument factories; the champion's configuration
    only when it differs from tonight's (`champion_rows` copies tonight's rows otherwise)."""
    hybrid = partial(
        HybridRecommender,
        reranker_params=None,
        label_days=settings.reranker_label_days,
        per_source=settings.candidates_per_source,
        recipe=Recipe.from_settings(settings),
        max_users=settings.reranker_max_users,
    )
    models: dict[str, Any] = {"popularity": PopularityModel}
    if with_content:
        models["content"] = ContentModel
    models["als"] = partial(ALSModel, **settings.als_params)
    models["hybrid"] = partial(hybrid, als_params=settings.als_params)
    if champion is not None and not same_as_tonight(settings, champion):
        models["als@champion"] = partial(ALSModel, **champion)
        models["hybrid@champion"] = partial(hybrid, als_params=champion)
    return models


def same_as_tonight(settings: Settings, champion: dict[str, Any]) -> bool:
    """The champion was trained with tonight's ALS parameters: its held-out rows would repeat
    tonight's exactly (same configuration, same split, seeded), so they are copied, not refitted
    (at 1M users that saves two fits, about 140 s of the night)."""
    return all(settings.als_params.get(name) == value for name, value in champion.items())


def champion_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`als@champion` and `hybrid@champion` rows copied from tonight's `als` and `hybrid`."""
    tonight = {row["model"]: row for row in rows}
    return [
        {**tonight[name], "model": f"{name}@champion"}
        for name in ("als", "hybrid")
        if name in tonight
    ]


def evaluate_holdout(interval_end: datetime, settings: Settings | None = None) -> HeldOutScores:
    """nDCG@10 of every configuration on the held-out window; the table goes to the lake and MLflow."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    data = load_training_data(settings, interval_end)
    holdout = timedelta(days=settings.holdout_days)
    split = time_split(
        data.events,
        data.items,
        interval_end - holdout,
        holdout,
        settings=settings,
        subscriptions=data.subscriptions,
        embeddings=data.embeddings,
    )
    rows = []
    champion = champion_als_params(settings)
    for name, factory in configurations(settings, data.embeddings is not None, champion).items():
        try:
            rows.append(evaluate_model(name, factory, split))
        except InboError as exc:
            log.warning("%s could not be evaluated on %s: %s", name, split.name, exc)
            rows.append({"model": name, "error": str(exc)})
    if champion is not None and same_as_tonight(settings, champion):
        rows += champion_rows(rows)
    table = pd.DataFrame(rows).set_index("model")
    Lake(settings.lake).write_json(
        table.reset_index().to_json(orient="records", indent=2), tables.EVALUATE_REPORTS, batch
    )
    metrics = {
        f"{column}.{name.replace('@', '_')}": float(value)
        for name, row in table.iterrows()
        for column, value in row.items()
        if isinstance(value, int | float) and not math.isnan(value)
    }
    log_step_run(
        settings, "evaluate", batch,
        {"split": split.name, "holdout_days": settings.holdout_days, "users": len(split.users)},
        metrics,
    )  # fmt: skip
    scores = table[GATE_METRIC].dropna() if GATE_METRIC in table else pd.Series(dtype=float)
    log.info("held-out %s on %s: %s", GATE_METRIC, split.name, scores.round(4).to_dict())
    return HeldOutScores(batch, {str(name): float(value) for name, value in scores.items()})


def register_and_gate(
    interval_end: datetime,
    als_run: str,
    reranker_run: str,
    scores: Mapping[str, float],
    settings: Settings | None = None,
) -> dict[str, Decision]:
    """Register tonight's ALS and reranker as challengers; promote each unless it is worse."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    directory = settings.model_dir(batch)
    runs = {"als": als_run, "reranker": reranker_run}
    decisions = {}
    for kind, config in GATED:
        if not runs[kind]:
            log.warning("no %s was trained for batch %s: nothing to register", kind, batch)
            continue
        version = registry.register(settings, kind, runs[kind], directory / kind, batch)
        decisions[kind] = gate(
            settings, kind, version, scores.get(config), scores.get(f"{config}@champion"),
            settings.promotion_margin,
        )  # fmt: skip
    records = {kind: asdict(decision) for kind, decision in decisions.items()}
    Lake(settings.lake).write_json(json.dumps(records, indent=2), tables.GATE_REPORTS, batch)
    log_step_run(
        settings, "gate", batch,
        {"margin": settings.promotion_margin, "metric": GATE_METRIC},
        {f"promoted.{kind}": float(d.promoted) for kind, d in decisions.items()}
        | {
            f"challenger.{kind}": d.challenger_score
            for kind, d in decisions.items()
            if d.challenger_score is not None
        }
        | {
            f"champion.{kind}": d.champion_score
            for kind, d in decisions.items()
            if d.champion_score is not None
        },
    )  # fmt: skip
    return decisions


def gate_batch(interval_end: datetime, settings: Settings | None = None) -> dict[str, Decision]:
    """`evaluate_holdout` then `register_and_gate` for the runs `inbo train` logged for the batch."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    runs = {kind: step_run_id(settings, kind, batch) for kind in ("als", "reranker")}
    if runs["als"] is None:
        raise InboError(f"no als run for batch {batch}: run `inbo train --date` first")
    scores = evaluate_holdout(interval_end, settings)
    return register_and_gate(
        interval_end, runs["als"], runs["reranker"] or "", scores.scores, settings
    )
