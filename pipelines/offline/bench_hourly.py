"""Benchmark of the hourly refresh: one busy hour of demo traffic after a nightly run.

The world is simulated to end one hour after the nightly batch, at the evening peak, so the hour
after the nightly holds real traffic (every user who opened, clicked or read in it is active).
World and nightly are built once per parameter set under `<var>/bench/hourly-*` and reused; only
the hourly run is timed, as `inbo refresh` in a fresh process (interpreter start and imports
included, as an Airflow task pays them). Run it with `inbo bench-hourly`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from inbo.errors import InboError
from inbo.lake import Lake, batch_key
from inbo.settings import Settings
from pipelines.offline.bench import machine_info

log = logging.getLogger(__name__)

NIGHTLY_END = datetime(2026, 11, 20, 20, tzinfo=UTC)
"""The nightly batch of the bench world; the timed hour is the next one (20:00-21:00 UTC), the
simulator's evening peak."""

STEP_LINE = re.compile(r"^step (?P<step>\S+) (?P<seconds>[0-9.]+) s$")


@dataclass(frozen=True)
class HourlyBenchResult:
    users: int
    items: int
    days: int
    active_users: int
    increment_events: int
    rows_published: int
    new_items: int
    steps: dict[str, float]
    wall_seconds: float
    peak_rss_mb: float
    machine: str


SHARD_USERS = 20_000
"""Users per nightly scoring shard: what keeps the nightly's scoring within memory."""


def world_settings(base: Settings, users: int, items: int, days: int) -> Settings:
    """Settings on the bench world's own var dir, never the demo's (and its own embedded Redis
    unless `INBO_REDIS_URL` names one), scoring in shards of about `SHARD_USERS` users."""
    var_dir = base.var_dir / "bench" / f"hourly-{users}u-{items}i-{days}d"
    return base.model_copy(
        update={
            "var_dir": var_dir,
            "redis_prefix": f"bench-hourly-{users}",
            "score_shards": max(1, users // SHARD_USERS),
        }
    )


def prepare_world(settings: Settings, users: int, items: int, days: int, seed: int = 7) -> None:
    """Simulate the world and run the nightly pipeline at `NIGHTLY_END`, unless done before."""
    from pipelines.demo.simulate import simulate

    marker = settings.var_dir / "nightly-done.json"
    if marker.exists():
        log.info("reusing the bench world in %s", settings.var_dir)
        return
    started = time.perf_counter()
    simulate(
        settings.app_db,
        users=users,
        items=items,
        days=days,
        seed=seed,
        end=(NIGHTLY_END + timedelta(hours=1)).replace(tzinfo=None),
        truth_dir=settings.var_dir / "simulation",
    )
    run_nightly(settings, NIGHTLY_END)
    marker.write_text(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))


def run_nightly(settings: Settings, end: datetime) -> str:
    """The nightly DAG's steps in this process (the held-out evaluation left out); the version."""
    from features.embeddings import build_embeddings
    from features.interactions import build_interactions
    from pipelines.ingest import ingest_exclusive
    from pipelines.promotion import register_and_gate
    from pipelines.publish import steps as publish
    from pipelines.score import score_users
    from pipelines.train import fit_baselines, train_als, train_reranker
    from pipelines.validate import validate_exclusive

    ingest_exclusive(end, settings)
    validate_exclusive(end, settings)
    build_interactions(end, settings)
    build_embeddings(end, settings)
    fit_baselines(end, settings)
    als = train_als(end, settings)
    reranker = train_reranker(end, settings)
    register_and_gate(end, als.run_id, reranker.run_id, {}, settings)
    score_users(end, settings)
    version = publish.verify_version(end, publish.publish_batch(end, settings), settings)
    publish.activate_version(version, settings)
    return version


def time_refresh(settings: Settings, end: datetime) -> tuple[dict[str, float], float, float]:
    """`inbo refresh --at end` in a child process: per-step seconds, wall seconds, peak RSS (MB)."""
    import resource

    env = _env(settings)
    inbo = str(Path(sys.executable).with_name("inbo"))
    started = time.perf_counter()
    result = subprocess.run(
        [inbo, "refresh", "--at", end.strftime("%Y-%m-%dT%H:%M")],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise InboError(f"inbo refresh failed: {result.stderr.strip().splitlines()[-1:]}")
    steps = {
        match["step"]: float(match["seconds"])
        for line in result.stdout.splitlines()
        if (match := STEP_LINE.match(line.strip()))
    }
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return steps, wall, peak_kb / 1024


def run_hourly_bench(
    base: Settings, users: int, items: int, days: int, seed: int = 7
) -> HourlyBenchResult:
    """Build (or reuse) the world and its nightly, then time one hourly refresh over the next hour."""
    settings = world_settings(base, users, items, days)
    prepare_world(settings, users, items, days, seed)
    end = NIGHTLY_END + timedelta(hours=1)
    _forget_refresh(settings, end)
    steps, wall, peak = time_refresh(settings, end)
    lake = Lake(settings.lake)
    scored = json.loads(lake.read_json("_reports/hourly_score", batch_key(end)))
    published = json.loads(lake.read_json("_reports/hourly", batch_key(end)))
    return HourlyBenchResult(
        users=users,
        items=items,
        days=days,
        active_users=scored["active_users"],
        increment_events=scored["increment_events"],
        rows_published=published["users"],
        new_items=scored["new_items"],
        steps=steps,
        wall_seconds=round(wall, 1),
        peak_rss_mb=round(peak),
        machine=", ".join(f"{k} {v}" for k, v in machine_info(_env(settings)).items()),
    )


def _forget_refresh(settings: Settings, end: datetime) -> None:
    """Put a fresh copy of the nightly table live, so every bench run refreshes the same hour."""
    from pipelines.publish import steps as publish

    version = publish.verify_version(
        NIGHTLY_END, publish.publish_batch(NIGHTLY_END, settings), settings
    )
    publish.activate_version(version, settings)
    lake = Lake(settings.lake)
    for table in ("_reports/hourly_score", "_reports/hourly"):
        path = f"{lake.path(table)}/{batch_key(end)}.json"
        if lake.fs.exists(path):
            lake.fs.rm(path)


def _env(settings: Settings) -> dict[str, str]:
    """The environment of a process working on the bench world."""
    from inbo.services import ensure_redis

    return {
        **os.environ,
        "INBO_VAR_DIR": str(settings.var_dir),
        "INBO_REDIS_PREFIX": settings.redis_prefix,
        "INBO_REDIS_URL": ensure_redis(settings),
    }


def format_result(result: HourlyBenchResult) -> str:
    """A Markdown table of one bench run."""
    rows = [
        ("world", f"{result.users:,} users, {result.items:,} issues, {result.days} days"),
        ("active users in the hour", f"{result.active_users:,}"),
        ("events ingested in the hour", f"{result.increment_events:,}"),
        ("user rows republished", f"{result.rows_published:,}"),
        ("new issues indexed", f"{result.new_items:,}"),
        *((f"step: {step}", f"{seconds:.1f} s") for step, seconds in result.steps.items()),
        ("end to end (fresh process)", f"{result.wall_seconds:.1f} s"),
        ("peak RSS", f"{result.peak_rss_mb:,.0f} MB"),
        ("machine", result.machine),
    ]
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def as_json(result: HourlyBenchResult) -> str:
    return json.dumps(asdict(result), indent=2)
