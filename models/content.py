"""Content-based recommendations: issues whose text is close to what the user recently read.

Every published item's text embedding (see `features.embeddings`) goes into a FAISS inner-product
index: exact below `hnsw_threshold` items, HNSW above, where exact search over every user gets
slow. A user's profile is the recency-weighted mean of the vectors of the items they engaged with
positively; their candidates are the nearest items to it that they have not interacted with yet,
each explained by the read item it is most similar to. The same index answers "more like this"
for every item.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import faiss
import numpy as np
import pandas as pd

from inbo.errors import DataNotFound, SourceError
from models.base import CANDIDATE_COLUMNS, TrainingData, no_candidates, require_fitted

log = logging.getLogger(__name__)

ARTIFACT_VERSION = 2
"""Layout of a saved model; bump it when `save` changes so an old artifact fails loudly on load."""
REASON_CODE = "similar_to_read"
USER_BATCH = 512
"""Users scored per FAISS call: bounds the (users x profile items x dim) gathers to ~40 MB."""
ITEM_BATCH = 1024


class ContentModel:
    """Recommender over item text embeddings; pass the batch's embeddings table to the constructor."""

    name = "content"

    def __init__(
        self,
        embeddings: pd.DataFrame | None = None,
        half_life_days: float = 14.0,
        max_profile_items: int = 50,
        hnsw_threshold: int = 50_000,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        hnsw_ef_search: int = 256,
    ) -> None:
        self.embeddings = embeddings
        self.half_life_days = half_life_days
        self.max_profile_items = max_profile_items
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search
        self.encoder = ""
        self.item_ids = np.empty(0, dtype=np.int64)
        self.vectors = np.empty((0, 0), dtype=np.float32)
        self.index: faiss.Index | None = None
        self.profiles = pd.DataFrame(columns=["user_id", "position", "weight"])
        self.seen = pd.DataFrame(columns=["user_id", "position"])

    def params(self) -> dict[str, Any]:
        return {
            "half_life_days": self.half_life_days,
            "max_profile_items": self.max_profile_items,
            "hnsw_threshold": self.hnsw_threshold,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.hnsw_ef_construction,
            "hnsw_ef_search": self.hnsw_ef_search,
        }

    def fit(self, data: TrainingData) -> Self:
        """Index the items published before `as_of` and keep every user's profile items."""
        started = time.perf_counter()
        given = self.embeddings if self.embeddings is not None else data.embeddings
        embeddings, self.encoder = checked_embeddings(given)
        catalogue = published_vectors(data, embeddings)
        self.item_ids = catalogue["item_id"].to_numpy(dtype=np.int64)
        self.vectors = np.stack(catalogue["embedding"].to_numpy()).astype(np.float32)
        self.index = build_index(
            self.vectors, self.hnsw_threshold, self.hnsw_m, self.hnsw_ef_construction
        )
        positions = pd.Index(self.item_ids)
        self.profiles = profile_items(
            data.interactions, positions, data.as_of, self.half_life_days, self.max_profile_items
        )
        self.seen = seen_items(data.interactions, positions)
        log.info(
            "content fitted: %d items in %s (%.2fs), %d user profiles",
            len(self.item_ids),
            type(self.index).__name__,
            time.perf_counter() - started,
            self.profiles["user_id"].nunique(),
        )
        return self

    def recommend(self, user_ids: np.ndarray, n: int) -> pd.DataFrame:
        """Up to `n` unseen items per user with a profile, nearest to it first."""
        self._index()  # an unfitted model fails here rather than recommending nothing
        users = np.intersect1d(user_ids, self.profiles["user_id"].to_numpy())
        frames = [
            self._recommend_batch(users[part], n) for part in _batches(len(users), USER_BATCH)
        ]
        if not frames:
            return no_candidates()
        return pd.concat(frames, ignore_index=True)

    def _recommend_batch(self, users: np.ndarray, n: int) -> pd.DataFrame:
        """Candidates for sorted, unique `users`, each explained by its closest profile item."""
        profile_pos, profile_weight, filled = padded(_rows_of(self.profiles, users), users)
        profile_vectors = self.vectors[profile_pos]  # users x profile items x dim
        queries = np.einsum("ul,uld->ud", profile_weight, profile_vectors)
        faiss.normalize_L2(queries)
        scores, found, keep = self._unseen_nearest(users, queries, n)
        # users x n candidates x profile items; a padding cell can never be the reason
        similarity = self.vectors[found] @ profile_vectors.transpose(0, 2, 1)
        similarity[np.broadcast_to(~filled[:, None, :], similarity.shape)] = -np.inf
        because = np.take_along_axis(profile_pos, similarity.argmax(axis=2), axis=1)
        rows, cols = np.nonzero(keep)
        return pd.DataFrame(
            {
                "user_id": users[rows],
                "item_id": self.item_ids[found[rows, cols]],
                "score": scores[rows, cols].astype(np.float64),
                "source": self.name,
                "reason_code": REASON_CODE,
                "reason_ref": self.item_ids[because[rows, cols]],
            },
            columns=list(CANDIDATE_COLUMNS),
        )

    def _unseen_nearest(
        self, users: np.ndarray, queries: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per user, the `n` nearest items they never interacted with: (scores, positions, kept).

        Searching `n` + the most items any of these users has seen leaves `n` after removing them.
        """
        seen = _rows_of(self.seen, users)
        width = len(self.item_ids)
        extra = int(seen["user_id"].value_counts().max()) if len(seen) else 0
        scores, found = search(self._index(), queries, min(n + extra, width), self.hnsw_ef_search)
        seen_keys = np.searchsorted(users, seen["user_id"].to_numpy()) * width + seen["position"]
        found_keys = np.arange(len(users))[:, None] * width + found
        keep = (found >= 0) & ~np.isin(found_keys, seen_keys.to_numpy())
        scores, found, keep = first_kept(scores, found, keep, n)
        return scores, np.where(keep, found, 0), keep

    def similar_items(self, item_id: int, k: int) -> pd.DataFrame:
        """The `k` items nearest to `item_id`, itself excluded; KeyError if it is not indexed."""
        return self.similar_to(np.array([item_id]), k)

    def more_like_this(self, k: int) -> pd.DataFrame:
        """`similar_items` for every indexed item, searched in batches."""
        positions = np.arange(self._index().ntotal)
        frames = [
            self._neighbours(positions[part], k) for part in _batches(len(positions), ITEM_BATCH)
        ]
        return pd.concat(frames, ignore_index=True)

    def add_items(self, catalogue: pd.DataFrame) -> np.ndarray:
        """Index the items of `catalogue` (item_id, title, embedding) not indexed yet; their ids.

        The hourly refresh adds issues published since the nightly fit, so they can be found by
        similarity the same hour; existing positions do not move.
        """
        new = catalogue[~catalogue["item_id"].isin(self.item_ids)].sort_values("item_id")
        if new.empty:
            return np.empty(0, dtype=np.int64)
        vectors = np.stack(new["embedding"].to_numpy()).astype(np.float32)
        self._index().add(vectors)
        self.item_ids = np.concatenate([self.item_ids, new["item_id"].to_numpy(dtype=np.int64)])
        self.vectors = np.vstack([self.vectors, vectors])
        log.info("content index: added %d items (%d in all)", len(new), len(self.item_ids))
        return new["item_id"].to_numpy(dtype=np.int64)

    def refresh_users(self, interactions: pd.DataFrame, as_of: datetime) -> Self:
        """Rebuild the profile and seen items of every user in `interactions` (their whole rows)."""
        positions = pd.Index(self.item_ids)
        users = interactions["user_id"].unique()
        profiles = profile_items(
            interactions, positions, as_of, self.half_life_days, self.max_profile_items
        )
        self.profiles = _replace_users(self.profiles, profiles, users)
        self.seen = _replace_users(self.seen, seen_items(interactions, positions), users)
        return self

    def similar_to(self, item_ids: np.ndarray, k: int) -> pd.DataFrame:
        """`similar_items` for several indexed items at once."""
        positions = pd.Index(self.item_ids).get_indexer(item_ids)
        if (positions < 0).any():
            raise KeyError(f"items {item_ids[positions < 0].tolist()} are not in the content index")
        return self._neighbours(positions, k)

    def _neighbours(self, positions: np.ndarray, k: int) -> pd.DataFrame:
        width = min(k + 1, len(self.item_ids))
        scores, found = search(self._index(), self.vectors[positions], width, self.hnsw_ef_search)
        keep = (found >= 0) & (found != positions[:, None])
        scores, found, keep = first_kept(scores, found, keep, k)
        rows, cols = np.nonzero(keep)
        return pd.DataFrame(
            {
                "item_id": self.item_ids[positions[rows]],
                "similar_item_id": self.item_ids[found[rows, cols]],
                "score": scores[rows, cols].astype(np.float64),
            }
        )

    def _index(self) -> faiss.Index:
        require_fitted(self.index is not None, self.name)
        assert self.index is not None
        return self.index

    def save(self, directory: Path) -> None:
        """FAISS index, position -> item mapping, profiles and seen items, versioned params."""
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index(), str(directory / "index.faiss"))
        pd.DataFrame({"item_id": self.item_ids}).to_parquet(
            directory / "items.parquet", index=False
        )
        self.profiles.to_parquet(directory / "profiles.parquet", index=False)
        self.seen.to_parquet(directory / "seen.parquet", index=False)
        meta = {
            "artifact_version": ARTIFACT_VERSION,
            "encoder": self.encoder,
            "index": type(self.index).__name__,
            "faiss": faiss.__version__,
            "params": self.params(),
        }
        (directory / "params.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Self:
        meta = json.loads((directory / "params.json").read_text())
        if meta.get("artifact_version") != ARTIFACT_VERSION:
            raise SourceError(
                f"{directory} holds content model artifact version "
                f"{meta.get('artifact_version')}, this code reads {ARTIFACT_VERSION}: retrain it"
            )
        model = cls(**meta["params"])
        model.encoder = meta["encoder"]
        model.index = faiss.read_index(str(directory / "index.faiss"))
        items = pd.read_parquet(directory / "items.parquet")
        if model.index.ntotal != len(items):
            raise SourceError(
                f"{directory}: index has {model.index.ntotal} vectors, {len(items)} ids"
            )
        model.item_ids = items["item_id"].to_numpy(dtype=np.int64)
        model.vectors = model.index.reconstruct_n(0, model.index.ntotal)
        model.profiles = pd.read_parquet(directory / "profiles.parquet")
        model.seen = pd.read_parquet(directory / "seen.parquet")
        return model


def build_index(
    vectors: np.ndarray, hnsw_threshold: int, m: int, ef_construction: int
) -> faiss.Index:
    """Exact inner product for small catalogues, HNSW (inner product) from `hnsw_threshold` items."""
    dim = vectors.shape[1]
    if len(vectors) < hnsw_threshold:
        index: faiss.Index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def search(
    index: faiss.Index, queries: np.ndarray, k: int, ef_search: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` (scores, positions); HNSW explores at least `k` nodes so it can return `k`."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if isinstance(index, faiss.IndexHNSW):
        # SearchParametersHNSW is missing from faiss's type stubs, hence the ignore
        params = faiss.SearchParametersHNSW(efSearch=max(ef_search, k))  # type: ignore[attr-defined]
        return index.search(queries, k, params=params)
    return index.search(queries, k)


def first_kept(
    scores: np.ndarray, found: np.ndarray, keep: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the first `n` kept columns moved to the front (order kept) and cut to width `n`."""
    keep = keep & (np.cumsum(keep, axis=1) <= n)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
    return (
        np.take_along_axis(scores, order, axis=1),
        np.take_along_axis(found, order, axis=1),
        np.take_along_axis(keep, order, axis=1),
    )


def checked_embeddings(embeddings: pd.DataFrame | None) -> tuple[pd.DataFrame, str]:
    """The embeddings and the one encoder they all come from (two models' vectors don't compare)."""
    if embeddings is None or embeddings.empty:
        raise DataNotFound(
            "content model has no item embeddings: build features/embeddings for the batch "
            "and pass them as ContentModel(embeddings=...)"
        )
    encoders = embeddings["model"].unique()
    if len(encoders) != 1:
        raise SourceError(f"embeddings mix encoders {sorted(encoders)}; expected exactly one")
    return embeddings, str(encoders[0])


def published_vectors(data: TrainingData, embeddings: pd.DataFrame) -> pd.DataFrame:
    """Items published before `as_of` that have a vector, by item id."""
    published = data.items.loc[
        data.items["published_at"] < pd.Timestamp(data.as_of), ["item_id", "title"]
    ]
    joined = published.merge(embeddings[["item_id", "embedding"]], on="item_id")
    if len(joined) < len(published):
        log.warning(
            "%d of %d published items have no embedding and will not be recommended by "
            "content; rebuild features/embeddings for this batch",
            len(published) - len(joined),
            len(published),
        )
    if joined.empty:
        raise DataNotFound("no published item has an embedding: nothing to index")
    return joined.sort_values("item_id", ignore_index=True)


def seen_items(interactions: pd.DataFrame, positions: pd.Index) -> pd.DataFrame:
    """Every indexed item each user interacted with in any way, by user: never recommended back."""
    seen = interactions.assign(position=positions.get_indexer(interactions["item_id"]))
    return seen.loc[seen["position"] >= 0, ["user_id", "position"]].sort_values(
        ["user_id", "position"], ignore_index=True
    )


def profile_items(
    interactions: pd.DataFrame,
    positions: pd.Index,
    as_of: datetime,
    half_life_days: float,
    max_items: int,
) -> pd.DataFrame:
    """Each user's latest `max_items` positively engaged indexed items, weighted by recency.

    `weight` only decides what counts as liked: its size is already decayed on the popularity
    half-life, so the profile applies its own half-life to `last_ts`.
    """
    positive = interactions[interactions["weight"] > 0]
    age_days = (pd.Timestamp(as_of) - positive["last_ts"]).dt.total_seconds() / 86400.0
    frame = pd.DataFrame(
        {
            "user_id": positive["user_id"].to_numpy(),
            "position": positions.get_indexer(positive["item_id"]),
            "weight": np.power(0.5, age_days.clip(lower=0).to_numpy() / half_life_days),
            "last_ts": positive["last_ts"].to_numpy(),
        }
    )
    frame = frame[frame["position"] >= 0].sort_values(
        ["user_id", "last_ts", "position"], ascending=[True, False, True]
    )
    kept = frame[frame.groupby("user_id").cumcount() < max_items]
    return kept.drop(columns="last_ts").reset_index(drop=True)


def padded(profiles: pd.DataFrame, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users x width) item positions, weights and filled-cell mask of each user's profile rows.

    Users have different numbers of profile items; a rectangle lets numpy do every user at once.
    Padding cells hold position 0 and weight 0, so they add nothing to a weighted sum.
    """
    user = np.searchsorted(users, profiles["user_id"].to_numpy())
    slot = profiles.groupby("user_id").cumcount().to_numpy()
    width = int(slot.max()) + 1 if len(slot) else 1
    positions = np.zeros((len(users), width), dtype=np.int64)
    weights = np.zeros((len(users), width), dtype=np.float32)
    filled = np.zeros((len(users), width), dtype=bool)
    positions[user, slot] = profiles["position"].to_numpy()
    weights[user, slot] = profiles["weight"].to_numpy()
    filled[user, slot] = True
    return positions, weights, filled


def _replace_users(frame: pd.DataFrame, fresh: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    """`frame` (sorted by user_id) with the rows of `users` replaced by `fresh`, still sorted."""
    kept = frame[~frame["user_id"].isin(users)]
    merged = pd.concat([kept, fresh], ignore_index=True)
    return merged.sort_values("user_id", kind="stable", ignore_index=True)


def _rows_of(frame: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    """Rows of `frame` (sorted by user_id) for the sorted `users`: slice the id range, then filter."""
    ids = frame["user_id"].to_numpy()
    window = frame.iloc[ids.searchsorted(users[0], "left") : ids.searchsorted(users[-1], "right")]
    return window[window["user_id"].isin(users)]


def _batches(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))
