"""The processes `inbo bench` starts: one nightly step each, as an Airflow task runs it, and the
frontend reader that looks users up while a publish runs.

`python -m pipelines.offline.bench_steps step NAME --date D [...]` prints the step's small JSON
result on its last line; `... read --users N --stop-file F --out O` reads until F exists.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from inbo.settings import get_settings
from pipelines.offline.bench import READER_RATE, redis_client


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    """One nightly step in this process, as an Airflow task would run it; a small JSON result."""
    end = datetime.strptime(args.date, "%Y-%m-%d").replace(tzinfo=UTC)
    steps: dict[str, Callable[[], Any]] = {
        "ingest": lambda: _ingest(end),
        "validate": lambda: _validate(end),
        "validate-backfill": lambda: _validate_backfill(end),
        "interactions": lambda: _interactions(end),
        "embed": lambda: _embed(end),
        "baselines": lambda: _fit("fit_baselines", end),
        "als": lambda: _fit("train_als", end),
        "reranker": lambda: _fit("train_reranker", end),
        "gate": lambda: _gate(end, args.als_run, args.reranker_run),
        "register": lambda: _register(end, args.als_run, args.reranker_run),
        "prepare": lambda: _prepare(end),
        "score": lambda: _score(end, args.shard, args.shards),
        "begin": lambda: {"version": _publish().begin_publish(end, args.shards)},
        "publish": lambda: _publish_writer(
            end, args.version, args.writer, args.writers, args.shards
        ),
        "verify": lambda: {"version": _publish().verify_version(end, args.version)},
        "activate": lambda: {"previous": _publish().activate_version(args.version)},
    }
    return dict(steps[args.step]())


def _ingest(end: datetime) -> dict[str, Any]:
    from pipelines.ingest import ingest

    return {"batch": ingest(end).batch}


def _validate(end: datetime) -> dict[str, Any]:
    from pipelines.validate import validate_batch

    return {"passed": validate_batch(end).passed}


def _validate_backfill(end: datetime) -> dict[str, Any]:
    """`_validate` of an earlier night, without the issues scheduled after it.

    The app database already holds issues scheduled for later days; validating a past night
    quarantines them as "published in the future", and quarantining a row with a list column
    (`tags`) fails in `pipelines.app.sources.as_strings`. The nightly run itself never sees them.
    """
    import pandas as pd

    from inbo.lake import Lake, batch_key

    lake = Lake(get_settings().lake)
    part = {"batch": batch_key(end)}
    items = lake.read("staging/items", part, "part")
    published = pd.to_datetime(items["published_at"], utc=True) < pd.Timestamp(end)
    lake.write(items[published], "staging/items", "part", part)
    return _validate(end)


def _interactions(end: datetime) -> dict[str, Any]:
    from features.interactions import build_interactions

    return asdict(build_interactions(end))


def _embed(end: datetime) -> dict[str, Any]:
    from features.embeddings import build_embeddings

    return {"encoded": build_embeddings(end).encoded}


def _fit(name: str, end: datetime) -> dict[str, Any]:
    from pipelines import train

    return {"run_id": getattr(train, name)(end).run_id}


def _gate(end: datetime, als_run: str, reranker_run: str) -> dict[str, Any]:
    from pipelines.promotion import evaluate_holdout, register_and_gate

    decisions = register_and_gate(end, als_run, reranker_run, evaluate_holdout(end).scores)
    return {kind: decision.promoted for kind, decision in decisions.items()}


def _register(end: datetime, als_run: str, reranker_run: str) -> dict[str, Any]:
    """Register tonight's models and make them champion without the held-out evaluation."""
    from inbo.lake import batch_key
    from pipelines import registry

    settings = get_settings()
    directory = settings.model_dir(batch_key(end))
    versions = {}
    for kind, run_id in (("als", als_run), ("reranker", reranker_run)):
        if run_id:
            versions[kind] = registry.register(
                settings, kind, run_id, directory / kind, batch_key(end)
            )
            registry.promote(settings, kind, versions[kind])
    return versions


def _prepare(end: datetime) -> dict[str, Any]:
    from pipelines.score import prepare_scoring

    return asdict(prepare_scoring(end))


def _score(end: datetime, shard: int, shards: int) -> dict[str, Any]:
    from pipelines.score import score_shard

    return asdict(score_shard(end, shard, shards))


def _publish_writer(
    end: datetime, version: str, writer: int, writers: int, shards: int
) -> dict[str, Any]:
    """`publish_shards`, timed inside the task (the process start is not publishing)."""
    publish = _publish()
    started = time.perf_counter()
    reports = publish.publish_shards(end, version, writer, writers, shards)
    return {
        "users": sum(report.users for report in reports),
        "seconds": time.perf_counter() - started,
        "write_seconds": sum(report.write_seconds for report in reports),
    }


def _publish() -> Any:
    from pipelines.publish import steps as publish

    return publish


def read_loop(users: int, rate: float, stop_file: Path, out: Path, env: dict[str, str]) -> None:
    """Pointer + GET for random users at `rate` per second until `stop_file` exists."""
    from pipelines.publish.contract import Keys

    client = redis_client(env)
    keys = Keys(get_settings().redis_prefix)
    rng = random.Random(1)
    latencies: list[float] = []
    stamps: list[float] = []
    misses = late = 0
    interval = 1.0 / rate
    next_at = time.perf_counter()
    while not stop_file.exists():
        user_id = rng.randint(1, users)
        stamps.append(time.time())
        started = time.perf_counter()
        version = client.get(keys.current)
        found = client.get(keys.user(version.decode(), user_id)) if version else None
        latencies.append(time.perf_counter() - started)
        misses += found is None
        next_at += interval
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            late += 1
    ms = np.array(latencies) * 1000
    np.save(out.with_suffix(".npy"), np.column_stack([np.array(stamps), ms]))
    out.write_text(
        json.dumps(
            {
                "requests": float(len(ms)),
                "rate_per_second": rate,
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "max_ms": float(ms.max()),
                "no_personal_row": float(misses),
                "behind_schedule": float(late),
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    """The step and reader processes the benchmark starts (not a user-facing command)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.offline.bench_steps")
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step")
    step.add_argument("step")
    step.add_argument("--date", required=True)
    step.add_argument("--shard", type=int, default=0)
    step.add_argument("--shards", type=int, default=1)
    step.add_argument("--writer", type=int, default=0)
    step.add_argument("--writers", type=int, default=1)
    step.add_argument("--version", default="")
    step.add_argument("--als-run", default="")
    step.add_argument("--reranker-run", default="")
    read = sub.add_parser("read")
    read.add_argument("--users", type=int, required=True)
    read.add_argument("--rate", type=float, default=READER_RATE)
    read.add_argument("--stop-file", type=Path, required=True)
    read.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from inbo import logs

    logs.configure(False)
    if args.command == "read":
        read_loop(args.users, args.rate, args.stop_file, args.out, dict(os.environ))
        return
    print(json.dumps(run_step(args), default=str))


if __name__ == "__main__":
    main()
