"""Evaluate and gate: challenger and champion compared on the same held-out window, then promoted.

The nightly DAG's `evaluate_holdout` and `register_and_gate` tasks. The last `holdout_days` of the
batch are held out; every model configuration is fitted on the data before them and scored on
what users clicked or read in them. The challenger is tonight's configuration, the champion is
the configuration (parameters) of the registered `champion`, both refitted on the same split, so
the comparison is fair whatever data each version first saw. `decide` is the gate's rule, a pure
function; `gate` applies it to the registry and writes the decision on the version.

In MLflow: each model's held-out metrics (`ndcg_at_10`, `recall_at_10`, `map_at_10`, ... and the
param `k`) go on its own training run (`als-<batch>`, `reranker-<batch>`; the reranker's are
those of the whole reranked pipeline, `hybrid`); the run `evaluate-<batch>` compares every
configuration (`ndcg_at_10/popularity`, `ndcg_at_10/als_champion`, ...); the gate's decision is
the version's tags `gate.decision` (promoted | kept) and `gate.reason`, its description, and the
tags of the run `gate-<batch>`.
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
from models.evaluation import DEFAULT_METRICS, evaluate_model, time_split
from models.hybrid import HybridRecommender
from models.metrics import DEFAULT_K
from models.popularity import PopularityModel
from pipelines import registry
from pipelines.registry import ModelKind
from pipelines.tracking import LoggedRun, log_step_run, log_to_run, metric_key, step_run_id
from pipelines.training_data import load_training_data

log = logging.getLogger(__name__)

GATE_METRIC = "ndcg_at_k"
"""The evaluation column the gate compares (logged as `ndcg_at_10`)."""
HOLDOUT_K = DEFAULT_K
"""List length of the held-out evaluation: the k in every held-out metric's name."""
ALS_PARAMS = ("factors", "regularization", "alpha", "iterations", "weighting")
GATED = ((ModelKind.ALS, "als"), (ModelKind.RERANKER, "hybrid"))
"""Each registered model kind and the held-out configuration whose scores describe and gate it."""


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

    @property
    def outcome(self) -> str:
        """`promoted` or `kept` (the champion stays): the version's `gate.decision` tag."""
        return "promoted" if self.promoted else "kept"


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
    """`decide` for a registered challenger version; moves `champion` to it when promoted, and
    records the decision on the version (tags and description)."""
    champion = registry.alias_version(settings, kind, registry.CHAMPION)
    verdict = decide(challenger_score, champion_score, champion is not None, margin)
    if verdict.promoted:
        registry.promote(settings, kind, challenger)
    name = registry.registered_name(kind)
    decision = Decision(
        name,
        challenger,
        champion,
        challenger_score,
        champion_score,
        margin,
        verdict.promoted,
        verdict.reason,
    )
    registry.annotate(
        settings,
        kind,
        challenger,
        {"gate.decision": decision.outcome, "gate.reason": decision.reason},
        describe(decision, registry.version_run(settings, kind, challenger)),
    )
    log.info("gate for %s v%d: %s (%s)", name, challenger, decision.outcome, verdict.reason)
    return decision


def describe(decision: Decision, run: LoggedRun) -> str:
    """The version's description: batch, data window, held-out scores, the gate's decision."""
    params, k = run.params, run.params.get("k")
    start, end = params.get("data_window_start", "?"), params.get("data_window_end", "?")
    lines = [
        f"**{decision.model} v{decision.challenger}**, trained on batch "
        f"`{run.tags.get('batch', '?')}`; data window {start} to {end}."
    ]
    held = {name: value for name, value in sorted(run.metrics.items()) if name.endswith(f"_at_{k}")}
    if k is not None and held:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in held.items())
        lines.append(
            f"Held-out ({params.get('holdout_split', '?')}, fitted before it; k={k}): {scores}."
        )
    else:
        lines.append("No held-out scores: the batch had too little data to evaluate.")
    if decision.champion is not None and decision.champion_score is not None:
        lines.append(
            f"Champion v{decision.champion}'s configuration on the same window: "
            f"{metric_key(GATE_METRIC, HOLDOUT_K)} {decision.champion_score:.4f}."
        )
    lines.append(f"Gate (margin {decision.margin}): **{decision.outcome}**; {decision.reason}.")
    return "\n\n".join(lines)


def champion_als_params(settings: Settings) -> dict[str, Any] | None:
    """The ALS parameters the `champion` version was trained with, from its MLflow run."""
    version = registry.alias_version(settings, ModelKind.ALS, registry.CHAMPION)
    if version is None:
        return None
    logged = registry.version_run(settings, ModelKind.ALS, version).params
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
    """Every configuration on the held-out window: the table to the lake, each model's metrics to
    its training run, the comparison to the run `evaluate-<batch>`; returns the nDCG@10s."""
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
            rows.append(evaluate_model(name, factory, split, k=HOLDOUT_K))
        except InboError as exc:
            log.warning("%s could not be evaluated on %s: %s", name, split.name, exc)
            rows.append({"model": name, "error": str(exc)})
    if champion is not None and same_as_tonight(settings, champion):
        rows += champion_rows(rows)
    table = pd.DataFrame(rows).set_index("model")
    Lake(settings.lake).write_json(
        table.reset_index().to_json(orient="records", indent=2), tables.EVALUATE_REPORTS, batch
    )
    params = {"k": HOLDOUT_K, "holdout_split": split.name, "holdout_days": settings.holdout_days}
    log_step_run(
        settings, "evaluate", batch, {**params, "users": len(split.users)},
        {
            f"{metric}/{name.replace('@', '_')}": value
            for name in table.index
            for metric, value in finite_metrics(table.loc[name]).items()
        },
    )  # fmt: skip
    for kind, config in GATED:
        run_id = step_run_id(settings, kind, batch)
        scored = finite_metrics(table.loc[config]) if config in table.index else {}
        if run_id is not None and scored:
            log_to_run(settings, run_id, params, scored)
    scores = table[GATE_METRIC].dropna() if GATE_METRIC in table else pd.Series(dtype=float)
    log.info("held-out %s on %s: %s", GATE_METRIC, split.name, scores.round(4).to_dict())
    return HeldOutScores(batch, {str(name): float(value) for name, value in scores.items()})


def finite_metrics(row: pd.Series) -> dict[str, float]:
    """One configuration's held-out numbers under their MLflow names: the metrics with their k
    (`ndcg_at_10`, `novelty`), the rest prefixed (`holdout_users`, `holdout_fit_seconds`) so they
    do not mix with the training run's own `users` and `fit_seconds`."""
    return {
        metric_key(str(column), HOLDOUT_K) if column in DEFAULT_METRICS else f"holdout_{column}": (
            float(value)
        )
        for column, value in row.items()
        if isinstance(value, int | float) and not math.isnan(value)
    }


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
    runs = {ModelKind.ALS: als_run, ModelKind.RERANKER: reranker_run}
    decisions = {}
    for kind, config in GATED:
        if not runs[kind]:
            log.warning("no %s was trained for batch %s: nothing to register", kind, batch)
            continue
        version = registry.register(settings, kind, runs[kind], directory / kind, batch)
        decisions[str(kind)] = gate(
            settings, kind, version, scores.get(config), scores.get(f"{config}@champion"),
            settings.promotion_margin,
        )  # fmt: skip
    records = {kind: asdict(decision) for kind, decision in decisions.items()}
    Lake(settings.lake).write_json(json.dumps(records, indent=2), tables.GATE_REPORTS, batch)
    log_step_run(
        settings, "gate", batch,
        {"margin": settings.promotion_margin, "metric": metric_key(GATE_METRIC, HOLDOUT_K)},
        {},
        tags={
            f"{kind}.{field}": value
            for kind, d in decisions.items()
            for field, value in (
                ("decision", d.outcome), ("reason", d.reason), ("version", str(d.challenger))
            )
        },
    )  # fmt: skip
    return decisions


def gate_batch(interval_end: datetime, settings: Settings | None = None) -> dict[str, Decision]:
    """`evaluate_holdout` then `register_and_gate` for the runs `inbo train` logged for the batch."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    als_run = step_run_id(settings, ModelKind.ALS, batch)
    reranker_run = step_run_id(settings, ModelKind.RERANKER, batch)
    if als_run is None:
        raise InboError(f"no als run for batch {batch}: run `inbo train --date` first")
    scores = evaluate_holdout(interval_end, settings)
    return register_and_gate(interval_end, als_run, reranker_run or "", scores.scores, settings)
