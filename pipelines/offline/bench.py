"""Scale benchmark: the nightly pipeline on a large simulated world, each stage in its own process.

`run_bench` builds (or reuses) a world under `<var>/bench/<params>/`, with its own lake, MLflow and
embedded Redis, so it never touches the demo's state. Simulation is not timed, nor is what stands
for the previous nights: ingesting and validating every day but the last, and encoding the items
published before it (MiniLM encodes only new items nightly). Then every nightly step for the last
day runs as `python -m pipelines.offline.bench_steps step ...` (`pipelines.offline.bench_steps`), like
an Airflow task process, so its peak
RSS is its own; score shards run `parallel` at a time, as a worker with that many slots would, and
publish shards `publish_parallel` at a time, as the DAG's `INBO_PUBLISH_PARALLEL` allows. While the
shards publish, a separate process reads users' rows (pointer + GET) at a fixed rate.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from inbo.settings import REPO_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

BENCH_END = datetime(2026, 11, 26, tzinfo=UTC)
"""The bench world's last night: fixed, so a cached world is reused across days."""
READER_RATE = 1000.0
"""Frontend lookups per second issued while a publish runs."""
MEMORY_SAMPLES = 1000
"""User keys whose `MEMORY USAGE` is averaged."""
DOC = REPO_ROOT / "docs" / "benchmarks.md"
WARMUP_STEP_DAYS = 7
"""Days each warm-up batch ingests."""
MEMORY_CAP = 16 * 1024**3
"""Address-space limit of every step process: a step needing more fails alone (MemoryError)."""


@dataclass(frozen=True)
class BenchParams:
    """One benchmark world and how its night runs."""

    users: int
    items: int = 50_000
    days: int = 30
    shards: int = 8
    seed: int = 7
    activity: float = 0.085
    per_source: int = 100
    parallel: int = 2
    publish_parallel: int = 1
    evaluate: bool = True
    label_days: float = 2.0

    @property
    def world(self) -> str:
        """The cache key of the simulated world (shards and the night's options do not change it)."""
        return f"u{self.users}-i{self.items}-d{self.days}-a{self.activity:g}-s{self.seed}"


@dataclass(frozen=True)
class Stage:
    """One timed stage: wall seconds, and the largest peak RSS of the processes it ran."""

    name: str
    seconds: float
    peak_rss_mb: float
    tasks: int = 1
    detail: str = ""


@dataclass
class BenchReport:
    params: BenchParams
    machine: dict[str, str]
    world: dict[str, Any]
    warmup: list[Stage] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    publish: dict[str, float] = field(default_factory=dict)
    reads: dict[str, float] = field(default_factory=dict)
    read_phases: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def nightly_seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages if not stage.name.startswith("  "))

    @property
    def peak_rss_mb(self) -> float:
        return max(stage.peak_rss_mb for stage in self.stages)


# -- the parent: world, warm-up, timed night ------------------------------------------------------


def run_bench(params: BenchParams, settings: Settings | None = None) -> BenchReport:
    """Build or reuse the world, warm it up, time its night; the report, not yet written."""
    base = (settings or get_settings()).var_dir / "bench"
    home = base / params.world
    env = bench_env(home, params)
    world = simulated_world(home, params)
    report = BenchReport(params, machine_info(env), world)
    day_before = BENCH_END - timedelta(days=1)
    report.warmup = warm_up(home, base, env, params, day_before)
    report.stages = night(home, env, params, report)
    return report


def bench_env(home: Path, params: BenchParams) -> dict[str, str]:
    """The environment of every step process: the bench's var dir, Redis and shard settings."""
    from inbo.services import ensure_redis

    env = {k: v for k, v in os.environ.items() if not k.startswith(("INBO_", "MLFLOW_"))}
    env.update(
        INBO_VAR_DIR=str(home),
        INBO_SCORE_SHARDS=str(params.shards),
        INBO_CANDIDATES_PER_SOURCE=str(params.per_source),
        INBO_RERANKER_LABEL_DAYS=str(params.label_days),
        INBO_PUBLISH_PARALLEL=str(params.publish_parallel),
        GX_ANALYTICS_ENABLED="False",
    )
    env["INBO_REDIS_URL"] = ensure_redis(Settings(var_dir=home))
    return env


def simulated_world(home: Path, params: BenchParams) -> dict[str, Any]:
    """Simulate the world once per parameters (not timed as a stage); its summary."""
    from pipelines.demo.simulate import simulate

    marker = home / "world.json"
    if marker.exists():
        return dict(json.loads(marker.read_text()))
    settings = Settings(var_dir=home)
    started = time.perf_counter()
    summary = simulate(
        settings.app_db,
        users=params.users,
        items=params.items,
        days=params.days,
        seed=params.seed,
        end=BENCH_END.replace(tzinfo=None),
        truth_dir=home / "simulation",
        activity=params.activity,
    )
    world = {**asdict(summary), "simulate_seconds": time.perf_counter() - started}
    marker.write_text(json.dumps(world, default=str, indent=2))
    return world


def warm_up(
    home: Path, base: Path, env: dict[str, str], params: BenchParams, day_before: datetime
) -> list[Stage]:
    """The previous nights, once per world: every day but the last ingested, older items encoded.

    Embeddings are cached by content hash, and worlds of the same items, days and seed share their
    catalogue, so the encoded table is kept in `<bench>/embeddings-...parquet` for the next world.
    """
    marker = home / "warmup.json"
    if marker.exists():
        return [Stage(**stage) for stage in json.loads(marker.read_text())]
    shared = base / f"embeddings-i{params.items}-d{params.days}-s{params.seed}.parquet"
    date = f"{day_before:%Y-%m-%d}"
    stages = []
    for night_end in backfill_nights(params, day_before):
        for name, step in (("ingest", "ingest"), ("validate", "validate-backfill")):
            command = [step_command(step, date=f"{night_end:%Y-%m-%d}")]
            stages.append(timed(f"{name} {night_end:%m-%d}", command, env, home))
    stages.append(timed("interactions", [step_command("interactions", date=date)], env, home))
    table = Path(home / "lake" / "features" / "embeddings" / f"batch={day_before:%Y%m%dT%H%MZ}")
    if shared.exists():
        table.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared, table / "part.parquet")
    else:
        stages.append(timed("embed", [step_command("embed", date=date)], env, home))
        shutil.copy(table / "part.parquet", shared)
    marker.write_text(json.dumps([asdict(stage) for stage in stages], indent=2))
    return stages


def backfill_nights(params: BenchParams, day_before: datetime) -> list[datetime]:
    """The batches that stand for the previous nights, a week apart (each ingests its week), so
    a warm-up ingest holds a week of events, not the whole window."""
    first = day_before - timedelta(days=params.days - 1)
    nights = [day_before]
    while nights[-1] - timedelta(days=WARMUP_STEP_DAYS) > first:
        nights.append(nights[-1] - timedelta(days=WARMUP_STEP_DAYS))
    return nights[::-1]


def night(home: Path, env: dict[str, str], params: BenchParams, report: BenchReport) -> list[Stage]:
    """Every nightly step for the last day, timed, in the nightly DAG's order.

    A step that fails (e.g. over `MEMORY_CAP`) ends the night: the report keeps what ran.
    """
    stages: list[Stage] = []
    try:
        _night(home, env, params, report, stages)
    except StepFailed as failed:
        stages.append(failed.stage)
    return stages


def _night(
    home: Path, env: dict[str, str], params: BenchParams, report: BenchReport, stages: list[Stage]
) -> None:
    date = f"{BENCH_END:%Y-%m-%d}"

    def run(name: str, *args: str) -> dict[str, Any]:
        stage, results = timed_with_results(name, [step_command(*args, date=date)], env, home)
        stages.append(stage)
        return results[0]

    for name in ("ingest", "validate", "interactions", "embed", "baselines"):
        run(name, name)
    als = run("ALS train", "als")
    reranker = run("reranker train", "reranker")
    run(
        "evaluate + gate" if params.evaluate else "register (no evaluation)",
        "gate" if params.evaluate else "register",
        "--als-run",
        str(als["run_id"]),
        "--reranker-run",
        str(reranker["run_id"]),
    )
    run("prepare scoring", "prepare")
    stages.extend(score_stages(home, env, params, date))
    stages.extend(publish_stages(home, env, params, date, report))


def score_stages(home: Path, env: dict[str, str], params: BenchParams, date: str) -> list[Stage]:
    """The score shards, run `parallel` at a time; split into candidates and rerank by phase time."""
    commands = [
        step_command("score", "--shard", str(s), "--shards", str(params.shards), date=date)
        for s in range(params.shards)
    ]
    stage, results = timed_with_results("score shards", commands, env, home, params.parallel)
    phases = {
        phase: sum(r["seconds"][phase] for r in results)
        for phase in ("load", "candidates", "rerank")
    }
    total = sum(phases.values()) or 1.0
    parts = [
        Stage(
            f"  {phase}",
            stage.seconds * phases[phase] / total,
            stage.peak_rss_mb,
            stage.tasks,
            f"{phases[phase]:.0f} task-s",
        )
        for phase in phases
    ]
    users = sum(r["users"] for r in results)
    return [
        Stage(stage.name, stage.seconds, stage.peak_rss_mb, stage.tasks, f"{users:,} users"),
        *parts,
    ]


def publish_stages(
    home: Path, env: dict[str, str], params: BenchParams, date: str, report: BenchReport
) -> list[Stage]:
    """begin -> shards -> verify -> activate, with a frontend reader running throughout.

    A first, untimed publish makes a live table for the reader to read while the timed one stages.
    """
    if not live_version(env):
        publish_all(home, env, params, date)
    readings = home / "logs" / "reads.json"
    with frontend_reader(readings, env, params.users):
        before = redis_memory(env)
        run = publish_all(home, env, params, date)
        after = redis_memory(env)
    report.reads = json.loads(readings.read_text())
    report.read_phases = phase_latencies(np.load(readings.with_suffix(".npy")), run.windows)
    shard_stage = next(stage for stage in run.stages if stage.name == "publish shards")
    writers = min(params.publish_parallel, params.shards)
    report.publish = {
        "users": run.users,
        "shard_seconds": shard_stage.seconds,
        "users_per_second": run.users / shard_stage.seconds,
        "in_task_users_per_second": run.users / (run.task_seconds / writers),
        "write_users_per_second": run.users / (run.write_seconds / writers),
        "end_to_end_users_per_second": run.users / sum(s.seconds for s in run.stages),
        "used_memory_bytes_per_user": (after - before) / run.users,
        **key_memory(env, int(run.users)),
    }
    return run.stages


@contextmanager
def frontend_reader(readings: Path, env: dict[str, str], users: int) -> Iterator[None]:
    """While the block runs, a separate process reads random users' rows (pointer + GET) at
    `READER_RATE`; once the block is over, `readings` holds its summary and `readings` with the
    suffix `.npy` every read (start, epoch seconds; latency, ms)."""
    stop = readings.with_suffix(".stop")
    stop.unlink(missing_ok=True)
    readings.parent.mkdir(parents=True, exist_ok=True)
    reader = subprocess.Popen(
        [
            sys.executable, "-m", "pipelines.offline.bench_steps", "read", "--users", str(users),
            "--rate", str(READER_RATE), "--stop-file", str(stop), "--out", str(readings),
        ],
        env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    time.sleep(2.0)  # the reader is connected and reading the current table before the block
    try:
        yield
    finally:
        stop.touch()
        reader.wait(timeout=60)


@dataclass(frozen=True)
class PublishRun:
    """The timed publish: its stages, when each ran (epoch seconds) and the writers' own times."""

    stages: list[Stage]
    windows: dict[str, tuple[float, float]]
    users: int
    task_seconds: float
    write_seconds: float


def publish_all(home: Path, env: dict[str, str], params: BenchParams, date: str) -> PublishRun:
    """The publish stages, run as the DAG runs them: begin, the writer tasks, verify, activate."""
    shards, writers = str(params.shards), str(params.publish_parallel)
    windows: dict[str, tuple[float, float]] = {}

    def run(name: str, commands: list[list[str]], parallel: int = 1) -> tuple[Stage, list[Any]]:
        started = time.time()
        stage, results = timed_with_results(name, commands, env, home, parallel)
        windows[name] = (started, time.time())
        return stage, results

    begin, results = run("publish begin", [step_command("begin", "--shards", shards, date=date)])
    version = str(results[0]["version"])
    commands = [
        step_command(
            "publish",
            "--version",
            version,
            "--writer",
            str(w),
            "--writers",
            writers,
            "--shards",
            shards,
            date=date,
        )
        for w in range(params.publish_parallel)
    ]
    shard_stage, counts = run("publish shards", commands, params.publish_parallel)
    users = sum(int(c["users"]) for c in counts)
    task_seconds = sum(float(c["seconds"]) for c in counts)
    write_seconds = sum(float(c["write_seconds"]) for c in counts)
    shard_stage = Stage(
        shard_stage.name, shard_stage.seconds, shard_stage.peak_rss_mb, shard_stage.tasks,
        f"{users:,} users, {params.shards} shards; {task_seconds:.1f} task-s publishing, of"
        f" which {write_seconds:.1f} s in Redis calls",
    )  # fmt: skip
    verify, _ = run("verify", [step_command("verify", "--version", version, date=date)])
    activate, _ = run("activate", [step_command("activate", "--version", version, date=date)])
    return PublishRun(
        [begin, shard_stage, verify, activate], windows, users, task_seconds, write_seconds
    )


def phase_latencies(
    samples: np.ndarray, windows: dict[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    """p50/p99/max (ms) and count of the reads that started inside each stage's window.

    `samples` has one row per read: its start (epoch seconds) and its latency in ms.
    """
    phases = {}
    for name, (start, end) in windows.items():
        inside = samples[(samples[:, 0] >= start) & (samples[:, 0] < end), 1]
        if len(inside):
            phases[name] = {
                "requests": float(len(inside)),
                "p50_ms": float(np.percentile(inside, 50)),
                "p99_ms": float(np.percentile(inside, 99)),
                "max_ms": float(inside.max()),
            }
    return phases


# -- processes ------------------------------------------------------------------------------------


def step_command(*args: str, date: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.offline.bench_steps", "step", *args, "--date", date]


def timed(name: str, commands: list[list[str]], env: dict[str, str], home: Path) -> Stage:
    return timed_with_results(name, commands, env, home)[0]


def timed_with_results(
    name: str, commands: list[list[str]], env: dict[str, str], home: Path, parallel: int = 1
) -> tuple[Stage, list[dict[str, Any]]]:
    """Run `commands`, `parallel` at a time; wall time, the largest peak RSS, each one's result."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    peak_kb = 0
    for batch in _chunks(commands, parallel):
        running = []
        for command in batch:
            label = "-".join(command[4:]).replace("/", "_")[:80]
            out = (logs / f"{label}.out").open("w+")
            err = (logs / f"{label}.log").open("w")
            process = subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdout=out, stderr=err, preexec_fn=_cap_memory
            )
            running.append((process, out, err, label))
        for process, out, err, label in running:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            err.close()
            peak_kb = max(peak_kb, usage.ru_maxrss)
            if process.returncode != 0:
                last = (logs / f"{label}.log").read_text().strip().splitlines()[-1:]
                raise StepFailed(
                    Stage(
                        name,
                        time.perf_counter() - started,
                        peak_kb / 1024,
                        len(commands),
                        f"FAILED: {' '.join(last)[:160]} (log: {logs / label}.log)",
                    )
                )
            out.seek(0)
            results.append(json.loads(out.read().strip().splitlines()[-1]))
            out.close()
    stage = Stage(name, time.perf_counter() - started, peak_kb / 1024, len(commands))
    log.info("%s: %.1f s, peak RSS %.0f MB", name, stage.seconds, stage.peak_rss_mb)
    print(f"  {name:<26} {stage.seconds:8.1f} s  {stage.peak_rss_mb:8.0f} MB", file=sys.stderr)
    return stage, results


class StepFailed(Exception):
    """A step process exited non-zero; `stage` records how far it got."""

    def __init__(self, stage: Stage) -> None:
        super().__init__(stage.detail)
        self.stage = stage


def _cap_memory() -> None:
    """Runs in each step process before it starts: fail it rather than the shared machine."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _chunks(items: list[list[str]], size: int) -> Iterator[list[list[str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- Redis: memory and the frontend reader --------------------------------------------------------


def redis_client(env: dict[str, str]) -> Any:
    import redis

    return redis.Redis.from_url(env["INBO_REDIS_URL"])


def live_version(env: dict[str, str]) -> str | None:
    from pipelines.publish.contract import Keys

    current = redis_client(env).get(Keys(get_settings().redis_prefix).current)
    return current.decode() if current else None


def redis_memory(env: dict[str, str]) -> float:
    return float(redis_client(env).info("memory")["used_memory"])


def key_memory(env: dict[str, str], users: int) -> dict[str, float]:
    """Mean `MEMORY USAGE` of sampled users' keys in the live table, and their payload bytes."""
    from pipelines.publish.contract import Keys

    client = redis_client(env)
    keys = Keys(get_settings().redis_prefix)
    version = live_version(env) or ""
    rng = random.Random(0)
    sizes, payloads = [], []
    for user_id in rng.sample(range(1, users + 1), min(MEMORY_SAMPLES, users)):
        key = keys.user(version, user_id)
        usage = client.memory_usage(key, samples=0)
        if usage:
            sizes.append(usage)
            payloads.append(client.strlen(key))
    if not sizes:
        return {}
    return {
        "memory_usage_bytes_per_user": float(np.mean(sizes)),
        "payload_bytes_per_user": float(np.mean(payloads)),
        "sampled_keys": float(len(sizes)),
    }


# -- the machine and the report -------------------------------------------------------------------


def machine_info(env: dict[str, str]) -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{memory_kb / 1024**2:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": str(redis_client(env).info("server")["redis_version"]),
    }


def format_report(report: BenchReport) -> str:
    """The report as the markdown section `docs/benchmarks.md` keeps per world."""
    p, w = report.params, report.world
    lines = [
        f"### {p.users:,} users, {p.items:,} items, {p.days} days",
        "",
        f"`inbo bench --users {p.users} --items {p.items} --days {p.days} --shards {p.shards}"
        f" --per-source {p.per_source} --label-days {p.label_days:g}"
        f" --parallel {p.parallel} --publish-parallel {p.publish_parallel}"
        f"{'' if p.evaluate else ' --no-evaluate'}`"
        f" ({BENCH_END:%Y-%m-%d}); world: {w.get('experience_interactions', 0):,} interactions,"
        f" {w.get('reading_progress', 0):,} reading-progress rows, {w.get('subscriptions', 0):,}"
        f" subscriptions; simulated in {w.get('simulate_seconds', 0):.0f} s (not timed below).",
        "",
        "Warm-up, once per world (the previous nights; not in the nightly total):",
        "",
        *_stage_table(report.warmup),
        "",
        f"The night of {BENCH_END:%Y-%m-%d}, one process per task, {p.parallel} score and"
        f" {p.publish_parallel} publish shard task(s) at a time:",
        "",
        *_stage_table(report.stages),
        f"| **nightly total** | **{report.nightly_seconds:,.0f}** "
        f"({report.nightly_seconds / 60:.1f} min) | **{report.peak_rss_mb:,.0f}** | | |",
        "",
        *_publish_lines(report),
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report.machine.items()) + ".",
    ]
    return "\n".join(lines)


def _stage_table(stages: list[Stage]) -> list[str]:
    rows = ["| stage | wall s | peak RSS MB | tasks | |", "|---|---:|---:|---:|---|"]
    for stage in stages:
        name = stage.name.strip() if stage.name.startswith("  ") else stage.name
        indent = "&nbsp;&nbsp;of which " if stage.name.startswith("  ") else ""
        rows.append(
            f"| {indent}{name} | {stage.seconds:,.1f} | {stage.peak_rss_mb:,.0f} "
            f"| {stage.tasks} | {stage.detail} |"
        )
    return rows


def _publish_lines(report: BenchReport) -> list[str]:
    pub, reads = report.publish, report.reads
    if not pub:
        return []
    lines = [
        f"- Publish: {pub['users']:,.0f} users. Redis writes (the staging calls, per writer)"
        f" **{pub['write_users_per_second']:,.0f} users/s**; inside the writer tasks (reading the"
        f" shard files, checking, packing, writing) {pub['in_task_users_per_second']:,.0f}"
        f" users/s; the stage's wall time with process start-up {pub['shard_seconds']:.1f} s ="
        f" {pub['users_per_second']:,.0f} users/s; {pub['end_to_end_users_per_second']:,.0f}"
        " users/s with begin, verify and activate.",
        f"- Redis memory: {pub['used_memory_bytes_per_user']:,.0f} bytes per user"
        " (`used_memory` growth of the staged version / users, fallback and similar lists"
        " included)",
    ]
    if "memory_usage_bytes_per_user" in pub:
        lines[-1] += (
            f"; `MEMORY USAGE` of a user key {pub['memory_usage_bytes_per_user']:,.0f} bytes"
            f" (payload {pub['payload_bytes_per_user']:,.0f} bytes; mean of"
            f" {pub['sampled_keys']:,.0f} sampled users) for a top-50 table with reasons."
        )
    if reads:
        lines.append(
            f"- Frontend read (pointer + GET, one connection, {reads['rate_per_second']:,.0f}/s"
            f" from a separate process) during the publish: p50 {reads['p50_ms']:.3f} ms,"
            f" **p99 {reads['p99_ms']:.3f} ms**, max {reads['max_ms']:.2f} ms over"
            f" {reads['requests']:,.0f} requests ({reads['behind_schedule']:,.0f} sent late)."
        )
        for name, phase in report.read_phases.items():
            lines.append(
                f"  - during {name}: p50 {phase['p50_ms']:.3f} ms, p99 {phase['p99_ms']:.3f} ms,"
                f" max {phase['max_ms']:.2f} ms ({phase['requests']:,.0f} requests)"
            )
    return lines


def write_doc(report: BenchReport, doc: Path = DOC) -> None:
    """Replace (or append) this world's section under "Scale" in `doc`; other sections stay."""
    heading = "\n\n## Scale\n\nSee `inbo bench --help`.\n"
    replace_section(doc, f"scale-bench {report.params.world}", format_report(report), heading)


def replace_section(doc: Path, marker: str, body: str, heading: str = "") -> None:
    """Put `body` between `<!-- marker -->` and `<!-- /marker -->` in `doc`, replacing what a
    previous run wrote there, or append it (after `heading`, if the doc lacks it)."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    section = f"{start}\n{body}\n{end}"
    text = doc.read_text()
    if start in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        if heading and heading.strip().splitlines()[0] not in text:
            text = text.rstrip("\n") + heading
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)
