"""Benchmark of one publish against the keys Redis already holds, and of what a publish costs
frontend reads with the embedded server's append-only log on and off. Run it with
`inbo bench-publish`.

Synthetic score output (`pipelines.offline.synthetic`) is written into the bench's own lake as
one batch's shard files and fallback; every publish is of that batch, in this process, one step
after another as the nightly runs them (`begin_publish`, `publish_shards` with one writer,
`verify_version`, `activate_version`), each timed. The bench has its own embedded Redis under
`<var>/bench/publish-<users>u/`, never `INBO_REDIS_URL`'s: it empties it first and toggles its log.

1. Flatness: the server is filled with earlier real publishes of the table (retired versions,
   kept for the rollback window) until it holds at least each `holding` count of keys; then
   `repeats` publishes are timed. After each, the oldest retired version is deleted and the log
   rewrite that activation asked for is waited out, so every repeat starts from the same state.
   Last, the retired versions are deleted down to the smallest size and it is timed again: a
   difference between sizes that the machine's load made would show there as well.
2. Reads: at the smallest `holding`, `repeats` publishes with the log on and `repeats` with it
   off, alternating, while a separate process (`pipelines.offline.bench.frontend_reader`, the scale
   bench's reader) looks random users up at `READER_RATE`. "On" is the server as
   `inbo.services` runs it: appendfsync everysec, always during the pointer switch, a log rewrite
   after activation (its reads are reported as their own window). "Off" is the same server after
   `CONFIG SET appendonly no`, published to as an external Redis (`INBO_REDIS_URL` set), so the
   platform neither switches fsync nor asks for a rewrite.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from inbo.errors import InboError
from inbo.lake import Lake, batch_key
from inbo.services import ensure_redis, redis_connection, stop_redis
from inbo.settings import REPO_ROOT, Settings
from pipelines.offline.bench import (
    READER_RATE,
    frontend_reader,
    machine_info,
    phase_latencies,
    replace_section,
)
from pipelines.offline.synthetic import make_fallback, make_recs, write_score_output
from pipelines.publish import steps as publish
from pipelines.publish.contract import Keys
from pipelines.publish.lifecycle import live_meta
from pipelines.publish.redis_io import text

log = logging.getLogger(__name__)

BATCH_END = datetime(2026, 11, 26, tzinfo=UTC)
"""The batch every publish of the bench is of."""
STEPS = ("begin", "stage", "verify", "activate")
PREFIX = "bench-publish"
DOC = REPO_ROOT / "docs" / "benchmarks.md"
SECTION = "publish-bench"
"""Name of the markers around this bench's section of `DOC`."""
REWRITE_TIMEOUT_SECONDS = 900.0
POLL_SECONDS = 0.05
LOG_REWRITE = "log rewrite"
"""The read window from the end of activation until the log rewrite it asked for is done."""

T = TypeVar("T")


@dataclass(frozen=True)
class PublishParams:
    users: int = 100_000
    holding: tuple[int, ...] = (200_000, 1_500_000)
    shards: int = 8
    per_user: int = 50
    items: int = 50_000
    repeats: int = 3

    def command(self) -> str:
        holding = " ".join(f"--holding {keys}" for keys in self.holding)
        return (
            f"inbo bench-publish --users {self.users} {holding} --shards {self.shards}"
            f" --per-user {self.per_user} --items {self.items} --repeats {self.repeats}"
        )


@dataclass(frozen=True)
class TimedPublish:
    """One publish: the keys and versions Redis held before it, each step's wall seconds and
    when it ran (epoch seconds), the part of staging spent in Redis calls (the rest reads,
    checks and packs the shard files), and the CPU seconds the Redis server used meanwhile."""

    keys_held: int
    versions_held: int
    seconds: dict[str, float]
    windows: dict[str, tuple[float, float]]
    stage_redis_seconds: float
    redis_cpu_seconds: float

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass(frozen=True)
class ReadRun:
    """The reads made while one publish ran: p50/p99/max (ms) and count per window (`publish`
    for the whole of it, each step, `LOG_REWRITE`), the reader's own counts over its run, and
    (log on) how long Redis stood still forking the log rewrite after activation."""

    aof: bool
    publish: TimedPublish
    phases: dict[str, dict[str, float]]
    late: int
    misses: int
    fork_ms: float | None


@dataclass(frozen=True)
class Measurement:
    """The timed publishes at one size; `again`: after deleting down from the larger sizes."""

    target: int
    runs: list[TimedPublish]
    again: bool = False


@dataclass(frozen=True)
class PublishBenchReport:
    params: PublishParams
    publishes: list[Measurement]
    """In the order measured: each `holding` size ascending, then the smallest again."""
    reads: list[ReadRun]
    payload_bytes: float
    machine: dict[str, str]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    date: str


# -- the run --------------------------------------------------------------------------------------


def run_publish_bench(base: Settings, params: PublishParams) -> PublishBenchReport:
    """Write the table into the bench's lake, then measure flatness and reads (module doc)."""
    load_before = os.getloadavg()
    settings = bench_settings(base, params)
    env = reader_env(settings)
    empty(settings)
    write_score_output(
        Lake(settings.lake),
        batch_key(BATCH_END),
        make_recs(params.users, params.per_user, seed=7, items=params.items),
        make_fallback(100),
        params.shards,
    )
    try:
        smallest, *larger = sorted(params.holding)
        publishes = [Measurement(smallest, timed_publishes(settings, params, smallest))]
        reads = read_runs(settings, env, params)
        publishes += [Measurement(t, timed_publishes(settings, params, t)) for t in larger]
        if larger:
            restore(settings, publishes[0].runs[0].versions_held)
            publishes.append(
                Measurement(smallest, timed_publishes(settings, params, smallest), True)
            )
        payload = payload_bytes(settings)
        machine = machine_info(env)
    finally:
        empty(settings)
        stop_redis(settings)
    return PublishBenchReport(
        params,
        publishes,
        reads,
        payload,
        machine,
        load_before,
        os.getloadavg(),
        f"{datetime.now(UTC):%Y-%m-%d}",
    )


def bench_settings(base: Settings, params: PublishParams) -> Settings:
    """Settings on the bench's own var dir, lake and embedded Redis, whatever `base` names."""
    return base.model_copy(
        update={
            "var_dir": base.var_dir / "bench" / f"publish-{params.users}u",
            "lake_url": "",
            "redis_url": "",
            "redis_prefix": PREFIX,
        }
    )


def reader_env(settings: Settings) -> dict[str, str]:
    """The environment of the reader process: the bench's Redis and prefix."""
    return {
        **os.environ,
        "INBO_VAR_DIR": str(settings.var_dir),
        "INBO_REDIS_PREFIX": settings.redis_prefix,
        "INBO_REDIS_URL": ensure_redis(settings),
    }


def empty(settings: Settings) -> None:
    """Drop every key of the bench's own server and shrink its log to match."""
    with redis_connection(settings) as client:
        client.flushall()
        client.bgrewriteaof()
    wait_for_rewrite(settings)


def timed_publishes(settings: Settings, params: PublishParams, keys: int) -> list[TimedPublish]:
    """Fill Redis to at least `keys` keys, then time `repeats` publishes, each from that state."""
    fill_to(settings, keys)
    runs = []
    for repeat in range(params.repeats):
        runs.append(timed_publish(settings, params.shards))
        log.info("publish %d at %d keys: %s", repeat + 1, runs[-1].keys_held, runs[-1].seconds)
        restore(settings, runs[-1].versions_held)
    return runs


def fill_to(settings: Settings, keys: int) -> None:
    """Publish the table again and again (each live in turn, then retired) until Redis holds at
    least `keys` keys; then wait for the log rewrite of the last activation."""
    while (held := dbsize(settings)) < keys:
        log.info("filling: %d of %d keys", held, keys)
        publish.publish_table(BATCH_END, settings)
    wait_for_rewrite(settings)


def timed_publish(settings: Settings, shards: int) -> TimedPublish:
    """Begin, stage, verify and activate one version of the batch, each step timed."""
    with redis_connection(settings) as client:
        keys_held = int(client.dbsize())
        versions_held = int(client.zcard(Keys(settings.redis_prefix).versions))
    cpu_before = redis_cpu(settings)
    seconds: dict[str, float] = {}
    windows: dict[str, tuple[float, float]] = {}

    def step(name: str, call: Callable[[], T]) -> T:
        started, clock = time.time(), time.perf_counter()
        result = call()
        seconds[name] = time.perf_counter() - clock
        windows[name] = (started, time.time())
        return result

    version = step("begin", lambda: publish.begin_publish(BATCH_END, shards, settings))
    staged = step(
        "stage", lambda: publish.publish_shards(BATCH_END, version, 0, 1, shards, settings)
    )
    step("verify", lambda: publish.verify_version(BATCH_END, version, settings))
    step("activate", lambda: publish.activate_version(version, settings))
    return TimedPublish(
        keys_held,
        versions_held,
        seconds,
        windows,
        sum(report.write_seconds for report in staged),
        redis_cpu(settings) - cpu_before,
    )


def restore(settings: Settings, versions: int) -> None:
    """Delete the oldest versions that are not live until `versions` are left; wait for the log."""
    keys = Keys(settings.redis_prefix)
    with redis_connection(settings) as client:
        live = client.get(keys.current)
        retired = [text(v) for v in client.zrange(keys.versions, 0, -1) if text(v) != live]
        excess = int(client.zcard(keys.versions)) - versions
    for version in retired[: max(0, excess)]:
        publish.remove_version(version, settings)
    wait_for_rewrite(settings)


def read_runs(settings: Settings, env: dict[str, str], params: PublishParams) -> list[ReadRun]:
    """`repeats` publishes with the log on and as many with it off, alternating, each with the
    reader running; the log is on again afterwards."""
    runs = []
    try:
        for repeat in range(params.repeats):
            for aof in (True, False):
                readings = (
                    settings.var_dir / "logs" / f"reads-{'on' if aof else 'off'}-{repeat}.json"
                )
                runs.append(read_run(settings, env, params, aof, readings))
                restore(settings, runs[-1].publish.versions_held)
    finally:
        set_log(settings, True)
    return runs


def read_run(
    settings: Settings, env: dict[str, str], params: PublishParams, aof: bool, readings: Path
) -> ReadRun:
    """One publish with the log on or off while the frontend reader runs (module doc)."""
    set_log(settings, aof)
    target = settings if aof else settings.model_copy(update={"redis_url": env["INBO_REDIS_URL"]})
    with frontend_reader(readings, env, params.users):
        run = timed_publish(target, params.shards)
        windows = {"publish": (run.windows["begin"][0], run.windows["activate"][1]), **run.windows}
        if aof:
            windows[LOG_REWRITE] = (run.windows["activate"][1], wait_for_rewrite(settings))
    fork_ms = last_fork_ms(settings) if aof else None
    summary = json.loads(readings.read_text())
    phases = phase_latencies(np.load(readings.with_suffix(".npy")), windows)
    log.info("reads during a publish, log %s: %s", "on" if aof else "off", phases.get("publish"))
    return ReadRun(
        aof, run, phases, int(summary["behind_schedule"]), int(summary["no_personal_row"]), fork_ms
    )


# -- Redis ----------------------------------------------------------------------------------------


def dbsize(settings: Settings) -> int:
    with redis_connection(settings) as client:
        return int(client.dbsize())


def redis_cpu(settings: Settings) -> float:
    """CPU seconds the server process has used (all its threads, not its forked children)."""
    with redis_connection(settings) as client:
        cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def last_fork_ms(settings: Settings) -> float:
    """How long the server's latest fork blocked it, ms."""
    with redis_connection(settings) as client:
        return float(client.info("stats")["latest_fork_usec"]) / 1000


def set_log(settings: Settings, on: bool) -> None:
    """Switch the append-only log on (waiting for the rewrite that starts it) or off."""
    with redis_connection(settings) as client:
        client.config_set("appendonly", "yes" if on else "no")
    wait_for_rewrite(settings)


def wait_for_rewrite(settings: Settings) -> float:
    """Wait until no log rewrite runs or is scheduled; the time it ended (epoch seconds)."""
    deadline = time.monotonic() + REWRITE_TIMEOUT_SECONDS
    with redis_connection(settings) as client:
        while True:
            state = client.info("persistence")
            if not state["aof_rewrite_in_progress"] and not state.get("aof_rewrite_scheduled"):
                return time.time()
            if time.monotonic() > deadline:
                raise InboError(f"the log rewrite took over {REWRITE_TIMEOUT_SECONDS:.0f} s")
            time.sleep(POLL_SECONDS)


def payload_bytes(settings: Settings) -> float:
    """Mean bytes of a user's payload in the live version (its meta record's bytes / users)."""
    with redis_connection(settings) as client:
        meta = live_meta(client, settings.redis_prefix) or {}
    users = meta.get("counts", {}).get("users", 0)
    return float(meta["bytes"]) / users if users else 0.0


# -- the report -----------------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 2) -> str:
    """Median and (min-max) of `values`; the value alone when there is one."""
    median = f"{statistics.median(values):,.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def median_total(measurement: Measurement) -> float:
    return statistics.median(run.total for run in measurement.runs)


def flatness_table(report: PublishBenchReport) -> list[str]:
    """One row per measurement: keys held, each step's wall seconds, the total, Redis's CPU."""
    rows = [
        "| keys held before | versions | " + " | ".join(STEPS) + " | total"
        " | of stage: Redis calls | Redis server CPU s |",
        "|---|---:|" + "---:|" * (len(STEPS) + 3),
    ]
    for m in report.publishes:
        runs = m.runs
        held = f"{runs[0].keys_held:,}" + (" (deleted back down)" if m.again else "")
        cells = [spread([run.seconds[step] for run in runs]) for step in STEPS]
        rows.append(
            f"| {held} | {runs[0].versions_held} | "
            + " | ".join(cells)
            + f" | **{spread([run.total for run in runs])}**"
            + f" | {spread([run.stage_redis_seconds for run in runs])}"
            + f" | {spread([run.redis_cpu_seconds for run in runs])} |"
        )
    return rows


def reads_table(report: PublishBenchReport) -> list[str]:
    """Per log mode: the publishes' wall time, the lookups made meanwhile, p50/p99/max."""
    rows = [
        "| Redis log | publishes | publish s | reads during it | lookups/s achieved"
        " | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for aof, label in ((True, "AOF, appendfsync everysec"), (False, "off")):
        runs = [run for run in report.reads if run.aof == aof]
        phases = [run.phases["publish"] for run in runs]
        rate = [p["requests"] / run.publish.total for p, run in zip(phases, runs, strict=True)]
        rows.append(
            f"| {label} | {len(runs)} | {spread([run.publish.total for run in runs])}"
            f" | {spread([p['requests'] for p in phases], 0)} | {spread(rate, 0)} | "
            + " | ".join(spread([p[k] for p in phases], 3) for k in ("p50_ms", "p99_ms", "max_ms"))
            + " |"
        )
    return rows


def phase_table(report: PublishBenchReport) -> list[str]:
    """p99 and max read latency, and reads, within each step of the publish, log on and off."""
    rows = [
        "| during | p99 ms, on | p99 ms, off | max ms, on | max ms, off | reads, on | reads, off |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in (*STEPS, LOG_REWRITE):
        cells = []
        for key, digits in (("p99_ms", 3), ("max_ms", 3), ("requests", 0)):
            for aof in (True, False):
                values = [
                    r.phases[phase][key] for r in report.reads if r.aof == aof and phase in r.phases
                ]
                cells.append(spread(values, digits) if values else "-")
        rows.append(f"| {phase} | " + " | ".join(cells) + " |")
    return rows


def format_report(report: PublishBenchReport) -> str:
    """The report as the markdown section `docs/benchmarks.md` keeps for this bench."""
    p = report.params
    late = {aof: sum(r.late for r in report.reads if r.aof == aof) for aof in (True, False)}
    misses = sum(r.misses for r in report.reads)
    forks = [r.fork_ms for r in report.reads if r.fork_ms is not None]
    before, after = (
        ", ".join(f"{x:.2f}" for x in load) for load in (report.load_before, report.load_after)
    )
    first, largest = report.publishes[0], max(report.publishes, key=lambda m: m.target)
    totals = "; ".join(
        f"{median_total(m):.2f} s at {m.runs[0].keys_held:,} keys"
        + (" (deleted back down)" if m.again else "")
        for m in report.publishes
    )
    lines = [
        "## Publish against a full keyspace",
        "",
        f"`{p.command()}` (`pipelines/offline/bench_publish.py`), run {report.date}. The table:"
        f" synthetic score output (`pipelines.offline.synthetic`), {p.users:,} users x top"
        f" {p.per_user} of {p.items:,} items with reasons in {p.shards} shard files and a"
        f" 100-item fallback, {report.payload_bytes:,.0f} bytes per user payload. Each publish is"
        " `begin_publish`, `publish_shards` (one writer), `verify_version`, `activate_version`"
        " (recovery pass, pointer switch with appendfsync always, log rewrite requested) in one"
        " process, into the bench's own embedded Redis, started as `inbo.services` starts it"
        " (AOF, appendfsync everysec).",
        "",
        "**Publish time against the keys Redis holds.** The keys held are retired versions:"
        f" earlier real publishes of the same {p.users:,}-user table, kept for the rollback window"
        " (not plain filler keys). After each timed publish the oldest retired version is deleted"
        " and the log rewrite waited out, so each repeat starts from the same state; after the"
        " largest size the retired versions are deleted down to the smallest again and it is timed"
        " once more. No reader runs meanwhile. Wall seconds, median (min-max) of"
        f' {p.repeats} publishes; "Redis calls" is the part of staging spent waiting on Redis (the'
        ' rest reads, checks and packs the shard files); "Redis server CPU" is what the server'
        " process used over the whole publish (INFO cpu, its threads, not the rewrite child):",
        "",
        *flatness_table(report),
        "",
        f"Median totals: {totals}; largest / first: **{median_total(largest) / median_total(first):.2f}**."
        " Before the lifecycle change the issue measured 12 s at 0.2M keys and 19-21 s at 1.5M"
        " (activation SCANned the keyspace); activation now SCANs nothing: it reads the versions'"
        " meta records and switches the control keys.",
        "",
        f"**Frontend reads during a publish, AOF on and off.** At {first.runs[0].keys_held:,} keys,"
        f" {p.repeats} publishes with the log on and {p.repeats} with it off, alternating, while a"
        " separate process (the scale bench's reader) reads random users' rows at"
        f" {READER_RATE:,.0f} lookups/s (GET pointer + GET user key, one connection). On: the"
        " server as the platform runs it. Off: the same server after `CONFIG SET appendonly no`,"
        " published to as an external Redis (`INBO_REDIS_URL` set), so the platform neither"
        " switches to appendfsync always for the pointer switch nor requests a log rewrite."
        " Latencies over the reads that started between the start of begin and the end of"
        " activate; median (min-max) over the publishes:",
        "",
        *reads_table(report),
        "",
        "Within each step (median (min-max) over the publishes; `log rewrite`: from the end of"
        " activation until the rewrite it requested finished, log on only):",
        "",
        *phase_table(report),
        "",
        f"Reads sent late (the reader waiting for a core), over the reader's whole runs:"
        f" {late[True]:,} with the log on, {late[False]:,} off; reads that found no row: {misses:,}."
        + (
            f" The fork of the log rewrite after activation stopped Redis for {spread(forks)} ms"
            " (INFO latest_fork_usec)."
            if forks
            else ""
        ),
        "",
        "Load average (1, 5, 15 min) as the run started, i.e. what other jobs put on the"
        f" machine: {before}; as it ended, its own processes included: {after}"
        f" ({report.machine.get('cores', '?')} cores, which Redis, the publishing process and the"
        " reader share with whatever else runs).",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report.machine.items()) + ".",
    ]
    return "\n".join(lines)


def write_doc(report: PublishBenchReport, doc: Path = DOC) -> None:
    """Replace (or append) this bench's section in `doc`; other sections stay."""
    replace_section(doc, SECTION, format_report(report))


def as_json(report: PublishBenchReport) -> str:
    return json.dumps(asdict(report), indent=2)
