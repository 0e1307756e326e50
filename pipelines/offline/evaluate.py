"""Benchmarks: every model family on one dataset, as `inbo evaluate --dataset ...` runs them.

`run_benchmark` builds a dataset's evaluation split, fits each model on its training side with the
harness of `models.evaluation`, and returns one row per model (metrics and wall times), logging
each row as an MLflow run of the "inbo-evaluation" experiment.

- `movielens-100k`: Microsoft Recommenders' protocol (`movielens_split`: stratified by item,
  seed 42, top 10, training items removed), so our rows sit beside their published table.
  Models: popularity, content (all-MiniLM-L6-v2 on title + genres), ALS with hyperparameters
  chosen on a validation split carved from the training ratings (`tune_als`), and ALS +
  reranker (`RerankedALS`): LightGBM LambdaRank over ALS and EASE candidates, learned on a
  validation carve of the training ratings. The test ratings are only ever used to score.
- `demo`: the platform's own time split on the lake's latest validated batch: fit at
  end - holdout, score the clicks and reads of the holdout. Popularity, content, ALS (the
  production parameters) and the production `HybridRecommender`.
- `mind PATH`: a MIND-format folder through the same time split; the hybrid learns from its
  impressions.

See docs/benchmarks.md for the measured tables and the protocol notes.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.ranking import LABEL
from inbo.errors import ConfigError, NotFitted
from inbo.settings import Settings, get_settings
from models import metrics as m
from models.als import ALSModel
from models.base import CANDIDATE_COLUMNS, TrainingData, no_candidates
from models.evaluation import (
    PAIR,
    ModelFactory,
    Split,
    evaluate,
    movielens_split,
    stratified_split,
    time_split,
)
from models.matrix import IdMap, pair_matrix
from models.reranker import Reranker

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("demo", "movielens-100k", "mind")
EXPERIMENT = "inbo-evaluation"

ALS_GRID: dict[str, tuple[Any, ...]] = {
    "factors": (32, 64, 128),
    "regularization": (10.0, 20.0, 40.0, 80.0, 160.0),
    "alpha": (1.0, 2.0, 5.0, 10.0, 20.0),
    "iterations": (15,),
}
"""What `tune_als` searches on MovieLens: every combination, scored by nDCG@k on validation."""

VALIDATION_RATIO = 0.75
"""Share of each item's training ratings kept for fitting when a validation split is carved out;
the rest are the validation truth (the same per-item stratification as the test split)."""
VALIDATION_SEED = 42

CANDIDATES = 100
"""Candidates per user and source that the reranker orders."""
EASE_LAMBDA = 500.0
"""L2 penalty of the EASE item-item model (Steck 2019) that adds candidates beside ALS."""
RERANKER_CARVES = 5
"""Validation carves (different seeds) whose examples the reranker learns from together."""
RERANKER_PARAMS: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 7,
    "min_child_samples": 200,
    "colsample_bytree": 0.8,
    "subsample": 0.8,
    "subsample_freq": 1,
}
"""Small, heavily regularised trees: the labels are few and noisy (chosen on a validation carve
of a validation carve, see docs/benchmarks.md)."""

TABLE_COLUMNS: dict[str, str] = {
    "ndcg_at_k": "nDCG@{k}",
    "precision_at_k": "P@{k}",
    "recall_at_k": "R@{k}",
    "map": "MAP",
    "mrr_at_k": "MRR@{k}",
    "hit_rate_at_k": "HR@{k}",
    "catalogue_coverage": "coverage",
    "novelty": "novelty",
    "intra_list_diversity": "diversity",
    "tune_seconds": "tune s",
    "fit_seconds": "fit s",
}
"""The columns `format_table` prints, with their headers ({k} is the list length)."""


@dataclass(frozen=True)
class Benchmark:
    """One dataset's evaluation problem: the split, the models and what to record about them."""

    dataset: str
    split: Split
    models: dict[str, ModelFactory]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model, the hyperparameters logged to MLflow."""
    tune_seconds: dict[str, float] = field(default_factory=dict)
    """Per model, time spent choosing hyperparameters on validation before the final fit."""
    item_vectors: pd.DataFrame | None = None
    """Vectors the diversity metric compares (the items' categories when None)."""
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per model, text files logged with its run (file name -> content)."""


# -- entry points ----------------------------------------------------------------------------------


def run_benchmark(
    dataset: str,
    path: Path | None,
    k: int = m.DEFAULT_K,
    log_to_mlflow: bool = True,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Evaluate every model of `dataset` and return one row per model (index `model`).

    `path` is the dataset folder: MovieLens' (default `pipelines.offline.datasets.MOVIELENS_DIR`), MIND's
    (required); the demo reads the lake of `settings`. Columns: the metrics of
    `models.evaluation.DEFAULT_METRICS`, `users`, `user_coverage`, `tune_seconds`,
    `fit_seconds`, `recommend_seconds`. `frame.attrs` holds the dataset and split names.
    """
    settings = settings or get_settings()
    bench = build_benchmark(dataset, path, k, settings)
    log.info("benchmark %s: %s, models %s", dataset, bench.split.name, list(bench.models))
    table = evaluate(bench.models, bench.split, k=k, item_vectors=bench.item_vectors)
    table.insert(
        table.columns.get_loc("fit_seconds"),
        "tune_seconds",
        [bench.tune_seconds.get(str(name), np.nan) for name in table.index],
    )
    table.attrs.update(dataset=dataset, split=bench.split.name, k=k)
    if log_to_mlflow:
        log_runs(table, bench, settings)
    return table


def build_benchmark(dataset: str, path: Path | None, k: int, settings: Settings) -> Benchmark:
    """The split and models of `dataset` (one of `DATASETS`)."""
    if dataset == "movielens-100k":
        return movielens_benchmark(path, k, settings)
    if dataset == "demo":
        return demo_benchmark(settings)
    if dataset == "mind":
        if path is None:
            raise ConfigError("the mind benchmark needs the folder of news.tsv and behaviors.tsv")
        return mind_benchmark(path, settings)
    raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def format_table(frame: pd.DataFrame) -> str:
    """The benchmark rows as a Markdown table: metrics to 3 decimals, seconds to 1."""
    k = int(frame.attrs.get("k", m.DEFAULT_K))
    columns = [name for name in TABLE_COLUMNS if name in frame.columns]
    headers = ["model", *(TABLE_COLUMNS[name].format(k=k) for name in columns)]
    rows = [
        [str(model), *(_cell(name, row[name]) for name in columns)]
        for model, row in frame.iterrows()
    ]
    widths = [max(len(line[i]) for line in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join("-" * (width + 1) + (":" if i else "-") for i, width in enumerate(widths))
        + "|"
    )
    title = [f"{frame.attrs['split']} (k={k})", ""] if "split" in frame.attrs else []
    return "\n".join([*title, line(headers), rule, *(line(row) for row in rows)])


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.1f}" if column.endswith("_seconds") else f"{value:.3f}"


# -- MovieLens-100k --------------------------------------------------------------------------------


def movielens_benchmark(path: Path | None, k: int, settings: Settings) -> Benchmark:
    """Microsoft's MovieLens-100k protocol with our four model families."""
    from models.content import ContentModel
    from models.popularity import PopularityModel
    from pipelines.offline.datasets import load_movielens

    data = load_movielens(path)
    split = movielens_split(data.ratings, data.items, by="item", weight="binary")
    embeddings = item_embeddings(data.items, "movielens-100k", settings)
    tuned = tune_als(split.train, k=k)
    return Benchmark(
        dataset="movielens-100k",
        split=split,
        models={
            "popularity": PopularityModel,
            "content": functools.partial(ContentModel, embeddings=embeddings),
            "als": functools.partial(ALSModel, **tuned.params),
            "als + reranker": functools.partial(
                RerankedALS, als_params=tuned.params, embeddings=embeddings
            ),
        },
        params={
            "popularity": {"top_categories": 3},
            "content": {"encoder": "all-MiniLM-L6-v2", "text": "title + genres"},
            "als": {**tuned.params, "validation_ndcg": tuned.score},
            "als + reranker": {
                **{f"als_{name}": value for name, value in tuned.params.items()},
                "candidates": CANDIDATES,
                "ease_lambda": EASE_LAMBDA,
                **{f"lgbm_{name}": value for name, value in RERANKER_PARAMS.items()},
            },
        },
        tune_seconds={"als": tuned.seconds, "als + reranker": tuned.seconds},
        item_vectors=genre_vectors(data.items),
        artifacts={"als": {"als_validation_grid.csv": tuned.table.to_csv(index=False)}},
    )


def genre_vectors(items: pd.DataFrame) -> pd.DataFrame:
    """Multi-hot genre vectors by item_id: diversity = share of list pairs sharing no genre."""
    exploded = items.set_index("item_id")["tags"].explode()
    return pd.crosstab(exploded.index, exploded.to_numpy()).clip(upper=1).astype(float)


def item_embeddings(items: pd.DataFrame, dataset: str, settings: Settings) -> pd.DataFrame:
    """all-MiniLM-L6-v2 vectors of the items, cached in var/benchmarks by content hash."""
    from features.embeddings import encode_items
    from inbo.lake import Lake
    from inbo.schemas import EMBEDDINGS

    cache = Lake(str(settings.var_dir / "benchmarks"))
    name = dataset.replace("/", "_")
    known = cache.exists("embeddings", None, name)
    encoded = encode_items(items, cache.read("embeddings", None, name) if known else None)
    if encoded.encoded:
        cache.write(encoded.frame, "embeddings", name, None, EMBEDDINGS)
    log.info("%s embeddings: %d encoded, %d cached", dataset, encoded.encoded, encoded.reused)
    return encoded.frame


def holdout_split(
    data: TrainingData, ratio: float = VALIDATION_RATIO, seed: int = VALIDATION_SEED
) -> Split:
    """A validation problem carved from training data: per item, `1 - ratio` of its positive
    interactions become the truth and leave the training side (Microsoft's split, one level down).
    """
    positive = data.interactions[data.interactions["weight"] > 0]
    kept, held = stratified_split(positive, ratio=ratio, by="item", seed=seed)
    train = TrainingData(
        interactions=kept.reset_index(drop=True),
        items=data.items,
        continue_reading=data.continue_reading,
        as_of=data.as_of,
        embeddings=data.embeddings,
    )
    return Split(
        name="validation",
        train=train,
        truth=held[PAIR].reset_index(drop=True),
        seen=kept[PAIR].reset_index(drop=True),
    )


@dataclass(frozen=True)
class Tuned:
    """The outcome of `tune_als`: the chosen parameters and what the search saw."""

    params: dict[str, Any]
    score: float
    """nDCG@k of `params` on the validation split."""
    seconds: float
    table: pd.DataFrame
    """Every configuration tried with its validation nDCG, best first."""


def tune_als(
    data: TrainingData,
    grid: Mapping[str, Sequence[Any]] | None = None,
    k: int = m.DEFAULT_K,
) -> Tuned:
    """The ALS hyperparameters of `grid` with the best nDCG@k on `holdout_split(data)`.

    Only `data` is read: pass a split's training side and the test truth cannot influence the
    choice. Ties keep the earlier configuration of the grid.
    """
    started = time.perf_counter()
    grid = grid or ALS_GRID
    validation = holdout_split(data)
    configs = [
        dict(zip(grid.keys(), values, strict=True)) for values in itertools.product(*grid.values())
    ]
    scores = []
    for params in configs:
        model = ALSModel(**params).fit(validation.train)
        lists = als_top_k(model, validation.users, k)
        scores.append(m.ndcg_at_k(validation.truth, lists, k))
    best = int(np.argmax(scores))  # the first of equal scores
    seconds = time.perf_counter() - started
    log.info(
        "ALS tuned on validation in %.1fs over %d configurations: %s (nDCG@%d %.4f)",
        seconds,
        len(configs),
        configs[best],
        k,
        scores[best],
    )
    table = pd.DataFrame(configs).assign(ndcg_at_k=scores)
    table = table.sort_values("ndcg_at_k", ascending=False, kind="stable", ignore_index=True)
    return Tuned(configs[best], float(scores[best]), seconds, table)


def als_top_k(model: ALSModel, users: np.ndarray, k: int) -> pd.DataFrame:
    """Each known user's top `k` unseen items from the factors alone (no explanations: fast)."""
    scores, rows = als_scores(model, users)
    columns = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, columns, axis=1)
    keep = np.isfinite(top)
    return pd.DataFrame(
        {
            m.USER_COL: np.broadcast_to(model.users.ids[rows][:, None], top.shape)[keep],
            m.ITEM_COL: model.items.ids[columns][keep],
            m.SCORE_COL: top[keep],
        }
    )


def als_scores(model: ALSModel, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(known users x catalogue) ALS scores, -inf on seen and never-read items, and their rows."""
    rows = model.users.index(np.asarray(users))
    rows = rows[rows >= 0]
    factors = model.als.user_factors[rows] @ model.als.item_factors.T
    scores = np.asarray(factors, dtype=np.float64)
    seen = model.seen[rows].tocoo()
    scores[seen.row, seen.col] = -np.inf
    readers = np.bincount(model.confidence.indices, minlength=len(model.items))
    scores[:, readers == 0] = -np.inf
    return scores, rows


# -- ALS + reranker --------------------------------------------------------------------------------

RERANK_FEATURES: tuple[str, ...] = (
    "als_score",
    "als_score_share",
    "als_rank",
    "ease_score",
    "ease_rank",
    "item_popularity",
    "item_popularity_rank",
    "user_activity",
    "user_mainstream",
    "genre_affinity",
    "genre_affinity_max",
    "content_similarity",
    "release_year",
    "time_gap_days",
)
"""The reranker's inputs. Counts are relative (to the busiest item, the average user), so
features learned on the validation carve keep their meaning on the fuller training data."""


@dataclass
class RerankSources:
    """Everything `RerankedALS` scores candidates with, fitted on one set of interactions.

    Dense (users x items) matrices: sized for MovieLens-scale catalogues, not for production.
    """

    als: ALSModel
    users: IdMap
    items: IdMap
    seen: sp.csr_matrix
    ease: np.ndarray
    """(items x items) EASE weights; a user's scores are their row of `seen` times it."""
    item_counts: np.ndarray
    user_counts: np.ndarray
    genres: np.ndarray
    """(items x genres) multi-hot."""
    vectors: np.ndarray
    """(items x dim) unit item embeddings; zero rows for items without one."""
    release_year: np.ndarray
    item_time: np.ndarray
    """Median interaction time per item (days since epoch; NaN without interactions)."""
    user_time: np.ndarray

    @classmethod
    def fit(
        cls, data: TrainingData, als_params: Mapping[str, Any], embeddings: pd.DataFrame
    ) -> Self:
        als = ALSModel(**als_params).fit(data)
        users, items = als.users, als.items
        positive = data.interactions[data.interactions["weight"] > 0]
        seen = pair_matrix(
            users,
            items,
            positive["user_id"].to_numpy(),
            positive["item_id"].to_numpy(),
            np.ones(len(positive)),
        )
        seen.data[:] = 1.0
        catalogue = data.items.set_index("item_id").reindex(items.ids)
        days = (positive["last_ts"] - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
        days = days / 86400.0
        return cls(
            als=als,
            users=users,
            items=items,
            seen=seen,
            ease=ease_weights(seen, EASE_LAMBDA),
            item_counts=np.asarray(seen.sum(axis=0)).ravel(),
            user_counts=np.asarray(seen.sum(axis=1)).ravel(),
            genres=_multi_hot(catalogue["tags"]),
            vectors=_unit_rows(embeddings, items),
            release_year=catalogue["published_at"].dt.year.to_numpy(dtype=float),
            item_time=days.groupby(positive["item_id"].to_numpy())
            .median()
            .reindex(items.ids)
            .to_numpy(),
            user_time=days.groupby(positive["user_id"].to_numpy())
            .median()
            .reindex(users.ids)
            .to_numpy(),
        )

    def candidates(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        """The union of each user's ALS and EASE top `n` unseen items, with every feature."""
        als, rows = als_scores(self.als, user_ids)
        ease = np.asarray(self.seen[rows] @ self.ease, dtype=np.float64)
        ease[~np.isfinite(als)] = -np.inf  # the same exclusions as ALS: seen and never read
        als_rank, ease_rank = _ranks(als), _ranks(ease)
        chosen = ((als_rank <= n) | (ease_rank <= n)) & np.isfinite(als)
        user_pos, item_pos = np.nonzero(chosen)
        scores = {
            "als_score": als[user_pos, item_pos],
            "als_score_share": als[user_pos, item_pos]
            / np.maximum(als.max(axis=1)[user_pos], 1e-9),
            "als_rank": als_rank[user_pos, item_pos].astype(float),
            "ease_score": ease[user_pos, item_pos],
            "ease_rank": ease_rank[user_pos, item_pos].astype(float),
        }
        return pd.DataFrame(
            {
                "user_id": self.users.ids[rows[user_pos]],
                "item_id": self.items.ids[item_pos],
                **scores,
                **self._pair_features(rows, user_pos, item_pos),
            }
        )

    def _pair_features(
        self, rows: np.ndarray, user_pos: np.ndarray, item_pos: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Item, user and (user, item) features of the pairs (rows[user_pos], item_pos)."""
        user_rows = rows[user_pos]
        popularity = self.item_counts / max(float(self.item_counts.max()), 1.0)
        mainstream = np.asarray(self.seen[rows] @ popularity).ravel() / np.maximum(
            self.user_counts[rows], 1
        )
        overlap = self._genre_shares(rows)[user_pos] * self.genres[item_pos]
        profile = self._profiles(rows)
        return {
            "item_popularity": popularity[item_pos],
            "item_popularity_rank": _ranks(self.item_counts[None, :])[0, item_pos]
            / len(self.items),
            "user_activity": self.user_counts[user_rows] / max(float(self.user_counts.mean()), 1.0),
            "user_mainstream": mainstream[user_pos],
            "genre_affinity": overlap.sum(axis=1)
            / np.maximum(self.genres[item_pos].sum(axis=1), 1),
            "genre_affinity_max": overlap.max(axis=1),
            "content_similarity": np.einsum("ij,ij->i", profile[user_pos], self.vectors[item_pos]),
            "release_year": self.release_year[item_pos],
            "time_gap_days": np.abs(self.item_time[item_pos] - self.user_time[user_rows]),
        }

    def _genre_shares(self, rows: np.ndarray) -> np.ndarray:
        """(users x genres): share of each user's items carrying each genre."""
        counts = np.asarray(self.seen[rows] @ self.genres)
        return counts / np.maximum(self.user_counts[rows], 1)[:, None]

    def _profiles(self, rows: np.ndarray) -> np.ndarray:
        """(users x dim): the unit mean embedding of each user's items."""
        return _unit(np.asarray(self.seen[rows] @ self.vectors))


def ease_weights(seen: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P / diag(P) with P = (X^T X + lam I)^-1, zero diagonal."""
    gram = np.asarray((seen.T @ seen).toarray(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every column within its row, highest score first (ties by column)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :], axis=1)
    return ranks


def _multi_hot(tags: pd.Series) -> np.ndarray:
    """(rows x distinct tags) 0/1 matrix of a series of tag lists."""
    exploded = tags.reset_index(drop=True).explode().dropna()
    names = pd.Index(sorted(set(exploded)))
    matrix = np.zeros((len(tags), max(len(names), 1)), dtype=np.float64)
    matrix[exploded.index.to_numpy(dtype=np.int64), names.get_indexer(exploded)] = 1.0
    return matrix


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def _unit_rows(embeddings: pd.DataFrame, items: IdMap) -> np.ndarray:
    """(items x dim) unit vectors in `items` order; zeros where an item has no embedding."""
    found = embeddings.drop_duplicates("item_id").set_index("item_id")["embedding"]
    dim = len(found.iloc[0]) if len(found) else 1
    matrix = np.zeros((len(items), dim), dtype=np.float64)
    position = items.index(found.index.to_numpy())
    known = position >= 0
    if known.any():
        matrix[position[known]] = np.stack(found.to_numpy()[known])
    return _unit(matrix)


class RerankedALS:
    """ALS (and EASE) candidates reranked by LightGBM LambdaRank, learned without the test set.

    `fit` carves a validation split from its training data (`holdout_split`), fits the sources
    on the rest, learns the reranker on which validation items the candidates contained, then
    refits the sources on all of the training data for `recommend`.
    """

    name = "als_reranker"

    def __init__(
        self,
        als_params: Mapping[str, Any],
        embeddings: pd.DataFrame,
        candidates: int = CANDIDATES,
        reranker_params: Mapping[str, Any] | None = None,
        features: Sequence[str] = RERANK_FEATURES,
        carves: int = RERANKER_CARVES,
        ratio: float = VALIDATION_RATIO,
    ) -> None:
        self.ratio = ratio
        self.als_params = dict(als_params)
        self.embeddings = embeddings
        self.n_candidates = candidates
        self.reranker_params = {**RERANKER_PARAMS, **(reranker_params or {})}
        self.features = tuple(features)
        self.carves = carves
        self.sources: RerankSources | None = None
        self.reranker = Reranker(features=self.features, **self.reranker_params)
        self.examples = pd.DataFrame()
        """The labelled candidates the reranker learned from (user ids made unique per carve)."""

    def fit(self, data: TrainingData) -> Self:
        parts = []
        for carve in range(self.carves):
            validation = holdout_split(data, self.ratio, seed=VALIDATION_SEED + carve)
            earlier = RerankSources.fit(validation.train, self.als_params, self.embeddings)
            found = earlier.candidates(validation.users, self.n_candidates)
            truth = validation.truth.assign(**{LABEL: 1})
            found = found.merge(truth, on=PAIR, how="left")
            found[LABEL] = found[LABEL].fillna(0).astype(int)
            log.info(
                "reranker examples of carve %d: %d rows, %d users, candidates hold %.1f%% of "
                "the validation truth",
                carve,
                len(found),
                found["user_id"].nunique(),
                100.0 * found[LABEL].sum() / max(len(validation.truth), 1),
            )
            # each carve's users are separate ranking groups
            parts.append(found.assign(user_id=found["user_id"] * self.carves + carve))
        examples = pd.concat(parts, ignore_index=True)
        self.examples = examples
        self.reranker = Reranker(features=self.features, **self.reranker_params).fit(examples)
        self.sources = RerankSources.fit(data, self.als_params, self.embeddings)
        return self

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        if self.sources is None:
            raise NotFitted("RerankedALS is not fitted: call fit() first")
        candidates = self.sources.candidates(np.asarray(user_ids), self.n_candidates)
        if candidates.empty:
            return no_candidates()
        ranked = self.reranker.rerank(candidates, n)
        return ranked.assign(
            source=self.name, reason_code="reranked", reason="Readers like you rated these"
        )[list(CANDIDATE_COLUMNS)]


# -- the platform's own data -----------------------------------------------------------------------


def demo_benchmark(settings: Settings) -> Benchmark:
    """The time split on the lake's latest validated batch: fit at end - holdout, score the rest."""
    from inbo.lake import Lake, batch_end
    from pipelines.training_data import load_training_data
    from pipelines.validate import latest_validated_batch

    end = batch_end(latest_validated_batch(Lake(settings.lake)))
    data = load_training_data(settings, end)
    holdout = timedelta(days=settings.holdout_days)
    split = time_split(
        data.events,
        data.items,
        cutoff=end - holdout,
        window=holdout,
        settings=settings,
        subscriptions=data.subscriptions,
        embeddings=data.embeddings
        if data.embeddings is not None
        else item_embeddings(data.items, "demo", settings),
    )
    return _platform_benchmark("demo", split, settings, hybrid=True)


def mind_benchmark(path: Path, settings: Settings) -> Benchmark:
    """A MIND-format folder through the time split: the last `holdout_days` of its log scored."""
    from inbo import schemas
    from pipelines.offline.datasets import load_mind

    mind = load_mind(path)
    clicks = mind.events[mind.events["event_type"] != "read"]
    end = clicks["ts"].max().ceil("D")
    holdout = timedelta(days=settings.holdout_days)
    if end - holdout <= clicks["ts"].min():
        raise ConfigError(
            f"the MIND log {clicks['ts'].min()} .. {end} is shorter than the holdout of "
            f"{settings.holdout_days} days; lower INBO_HOLDOUT_DAYS"
        )
    embeddings = item_embeddings(mind.items, f"mind-{Path(path).name}", settings)
    split = time_split(
        mind.events,
        mind.items,
        cutoff=(end - holdout).to_pydatetime(),
        window=holdout,
        settings=settings,
        subscriptions=schemas.empty(schemas.SUBSCRIPTIONS),  # MIND has none
        embeddings=embeddings,
    )
    has_impressions = bool((mind.events["event_type"] == "impression").any())
    if not has_impressions:
        log.warning("the MIND folder has no impressions: the hybrid's reranker is left out")
    return _platform_benchmark("mind", split, settings, hybrid=has_impressions)


def _platform_benchmark(dataset: str, split: Split, settings: Settings, hybrid: bool) -> Benchmark:
    """Popularity, content, ALS and (when it can learn) the hybrid, fitted as the nightly batch."""
    from features.interactions import Recipe
    from models.content import ContentModel
    from models.hybrid import HybridRecommender
    from models.popularity import PopularityModel

    als_params = dict(settings.als_params)
    models: dict[str, ModelFactory] = {
        "popularity": PopularityModel,
        "content": ContentModel,
        "als": functools.partial(ALSModel, **als_params),
    }
    params: dict[str, dict[str, Any]] = {"popularity": {}, "content": {}, "als": als_params}
    if hybrid:
        hybrid_params: dict[str, Any] = {
            "als_params": als_params,
            "label_days": settings.reranker_label_days,
            "per_source": settings.candidates_per_source,
            "recipe": Recipe.from_settings(settings),
        }
        models["hybrid"] = functools.partial(HybridRecommender, **hybrid_params)
        params["hybrid"] = hybrid_params
    return Benchmark(dataset=dataset, split=split, models=models, params=params)


# -- MLflow ----------------------------------------------------------------------------------------


def log_runs(table: pd.DataFrame, bench: Benchmark, settings: Settings) -> list[str]:
    """One MLflow run per model row in the "inbo-evaluation" experiment; returns the run ids."""
    import mlflow

    from pipelines.tracking import connect, git_commit

    connect(settings)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        experiment_id = mlflow.create_experiment(
            EXPERIMENT, artifact_location=settings.mlflow_artifacts.as_uri()
        )
    else:
        experiment_id = experiment.experiment_id
    invocation = uuid.uuid4().hex[:12]
    train = bench.split.train
    run_ids = []
    for model, row in table.iterrows():
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{bench.dataset}/{model}"
        ) as run:
            mlflow.set_tags(
                {
                    "dataset": bench.dataset,
                    "model": str(model),
                    "split": bench.split.name,
                    "benchmark": invocation,
                    "mlflow.source.git.commit": git_commit(),
                }
            )
            mlflow.log_params(
                {
                    "k": table.attrs.get("k", m.DEFAULT_K),
                    "as_of": pd.Timestamp(train.as_of).isoformat(),
                    "train_pairs": len(train.interactions),
                    "truth_pairs": len(bench.split.truth),
                    **{
                        name: str(value)[:500]
                        for name, value in bench.params.get(str(model), {}).items()
                    },
                }
            )
            mlflow.log_metrics(
                {name: float(value) for name, value in row.items() if np.isfinite(value)}
            )
            for file_name, text in bench.artifacts.get(str(model), {}).items():
                mlflow.log_text(text, file_name)
            run_ids.append(str(run.info.run_id))
    log.info("logged %d runs to MLflow experiment %s", len(run_ids), EXPERIMENT)
    return run_ids


def main(argv: Sequence[str] | None = None) -> None:
    """Run one dataset's benchmark and print its table (what `inbo evaluate` does)."""
    import argparse

    from inbo import logs

    parser = argparse.ArgumentParser(prog="python -m pipelines.offline.evaluate", description=main.__doc__)
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--path", type=Path, help="dataset folder (MovieLens: default shared)")
    parser.add_argument("-k", type=int, default=m.DEFAULT_K, help="list length")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the rows to MLflow")
    args = parser.parse_args(argv)
    logs.configure(False)
    table = run_benchmark(args.dataset, args.path, args.k, log_to_mlflow=not args.no_mlflow)
    print(format_table(table))


if __name__ == "__main__":
    main()
