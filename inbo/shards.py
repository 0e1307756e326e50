"""User shards: how scoring and publishing split the users so each task's memory is bounded.

A user's shard is `user_id mod shards`: stable across runs and models, and balanced for the app's
sequential ids. Lake tables split by shard use the partition `shard=<key>`, `shard_key` below.
"""

from __future__ import annotations

import numpy as np


def user_shard(user_ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard (0 .. shards-1) of each user id."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    return np.asarray(user_ids, dtype=np.int64) % shards


def writer_shards(writer: int, writers: int, shards: int) -> list[int]:
    """The score shards publish writer `writer` (0 .. writers-1) stages: every writers-th one.

    Publishing needs little memory, so a few long tasks beat one per score shard, whose process
    start-up (seconds each) would dwarf its ~0.1 s of writing.
    """
    if not 0 <= writer < writers:
        raise ValueError(f"writer {writer} is not in 0..{writers - 1}")
    return list(range(writer, shards, writers))


def shard_key(shard: int, shards: int) -> str:
    """The lake partition value of one shard, e.g. `003of016`; it names the shard count too."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    return f"{shard:03d}of{shards:03d}"
