"""Synthetic score output: per-user recommendation tables and a fallback list shaped like what
scoring writes, for the publish tests and the publish benchmark (`pipelines.offline.bench_publish`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from inbo import tables
from inbo.lake import Lake
from inbo.reasons import REASONS
from inbo.schemas import RECOMMENDATIONS
from inbo.shards import shard_key, user_shard

CODES = ("because_you_read", "popular_in_category", "continue_reading", "trending")
"""The reason codes a synthetic row draws from (uniformly)."""

SOURCE = {r.code: r.source for r in REASONS}


def make_recs(
    users: int, per_user: int, seed: int = 0, first: int = 1, items: int = 1000
) -> pd.DataFrame:
    """`per_user` distinct items (of ids 0..items-1) per user first..first+users-1, with reasons
    and the refs they need, rows shuffled."""
    rng = np.random.default_rng(seed)
    rows = users * per_user
    codes = rng.choice(CODES, rows)
    refs = np.where(
        codes == "because_you_read",
        rng.integers(1, items, rows),
        np.where(codes == "continue_reading", rng.integers(1, 100, rows), -1),
    )
    reason_ref = pd.array(refs, dtype="Int64")
    reason_ref[refs < 0] = pd.NA
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(first, first + users), per_user),
            "rank": np.tile(np.arange(1, per_user + 1), users).astype("int32"),
            "item_id": np.concatenate(
                [rng.choice(items, per_user, replace=False) for _ in range(users)]
            ),
            "score": rng.random(rows),
            "source": pd.Series(codes).map(SOURCE),
            "reason_code": codes,
            "reason_ref": reason_ref,
        }
    )
    return frame.sample(frac=1.0, random_state=seed, ignore_index=True)


def make_fallback(size: int = 10) -> pd.DataFrame:
    """Like scoring's: trending items and no reason_ref column."""
    return pd.DataFrame(
        {
            "rank": np.arange(1, size + 1, dtype="int32"),
            "item_id": np.arange(500, 500 + size),
            "score": np.linspace(1.0, 0.1, size),
            "source": "popularity",
            "reason_code": "trending",
        }
    )


def write_score_output(
    lake: Lake, batch: str, recs: pd.DataFrame, fallback: pd.DataFrame, shards: int
) -> None:
    """`recs` as the batch's `shards` score shard files (replacing any it had), `fallback` as its
    fallback list, and a score plan naming every source's model as synthetic."""
    folder = lake.path(tables.RECS.path, {"batch": batch})
    if lake.fs.exists(folder):
        lake.fs.rm(folder, recursive=True)
    owner = user_shard(recs["user_id"].to_numpy(), shards)
    for shard in range(shards):
        partition = {"batch": batch, "shard": shard_key(shard, shards)}
        lake.write(recs[owner == shard], tables.RECS.path, "part", partition, RECOMMENDATIONS)
    lake.write(fallback, tables.RECS_FALLBACK.path, "part", {"batch": batch})
    sources = sorted({*recs["source"].unique(), *fallback["source"].unique()})
    plan = {
        "batch": batch,
        "shards": shards,
        "users": int(recs["user_id"].nunique()),
        "models": {source: "synthetic" for source in sources},
    }
    lake.write_json(json.dumps(plan), tables.SCORE_PLANS, batch)
