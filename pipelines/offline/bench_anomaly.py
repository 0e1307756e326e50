"""Anomaly detection benchmark: false alarms over a clean simulated week, detection delay of
each injected incident, all through `AnomalyMonitor.poll` (the exporter's code path).

One world is simulated with `history_days` of seasonal history, `clean_days` replayed as the
clean week, then two incident days: each incident kind once at the day's busy hours and once at
its trough (the broken feed at the start and the end of the publishing day: at night nothing is
published, so there is nothing to miss). The monitor seeds from the app database at the start
of the replay and is then polled once per simulated minute, `now` advancing, exactly as the
exporter polls it once a minute. An alarm is a series becoming active (an episode).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from inbo.settings import REPO_ROOT, Settings
from pipelines.demo.incidents import DEFAULT_DURATION, Incident, IncidentKind
from pipelines.demo.simulate import simulate
from pipelines.monitoring.anomaly import AnomalyMonitor, minute_of
from pipelines.offline.bench import replace_section

DOC = REPO_ROOT / "docs" / "benchmarks.md"
SECTION = "anomaly-bench"
HEADING = "\n\n## Anomaly detection\n"
END = datetime(2026, 11, 30)
"""End of the replay (fixed, so the same seed gives the same world on any day)."""
TAIL = timedelta(days=2)
"""The world goes on past the replay: a simulation's last days are not like the others
(subscriptions and their ends crowd in before its end)."""
INCIDENT_HOURS: dict[IncidentKind, tuple[tuple[str, float], ...]] = {
    IncidentKind.CLICK_OUTAGE: (("peak", 8.0), ("trough", 3.0)),
    IncidentKind.BOT_BURST: (("peak", 12.0), ("trough", 4.5)),
    IncidentKind.BROKEN_FEED: (("publishing starts", 5.5), ("publishing ends", 19.0)),
}
"""When each incident starts on the first (first value) and second incident day (UTC hours)."""
FIRES_ON: dict[IncidentKind, tuple[str, ...]] = {
    IncidentKind.CLICK_OUTAGE: ("events:click", "ctr:"),
    IncidentKind.BOT_BURST: ("impressions", "ctr:"),
    IncidentKind.BROKEN_FEED: ("new_issues",),
}
"""Series (or prefixes) an alarm for the incident is expected on."""
AFTERMATH = timedelta(minutes=30)
"""After an incident's end, alarms still count as the incident's (the window drains)."""


@dataclass(frozen=True)
class AnomalyParams:
    users: int = 60_000
    items: int = 120_000
    history_days: int = 14
    clean_days: int = 7
    seed: int = 7


@dataclass(frozen=True)
class Detection:
    kind: str
    label: str
    start: str
    delay_minutes: float | None  # None: not detected within the incident and its aftermath
    series: list[str]


@dataclass
class AnomalyBenchReport:
    params: AnomalyParams
    events: int
    trough_events_per_hour: int
    issues_per_publishing_hour: float
    polls: int
    seconds_per_poll: float
    seed_seconds: float
    simulate_seconds: float
    clean_alarms: list[tuple[str, str]]
    detections: list[Detection]
    stray_alarms: list[tuple[str, str]] = field(default_factory=list)
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()


def incidents(start: datetime) -> list[Incident]:
    """The incidents of the two days from `start` (the end of the clean week); the broken feed
    lasts an hour, so the next one starts from a working feed."""
    return [
        Incident(
            kind,
            start + timedelta(days=day, hours=hour),
            timedelta(hours=1) if kind is IncidentKind.BROKEN_FEED else DEFAULT_DURATION[kind],
        )
        for kind, starts in INCIDENT_HOURS.items()
        for day, (_, hour) in enumerate(starts)
    ]


def run_anomaly_bench(settings: Settings, params: AnomalyParams) -> AnomalyBenchReport:
    """Simulate the bench world under `<var>/bench/anomaly/`, replay it, measure."""
    load_before = os.getloadavg()
    root = settings.var_dir / "bench" / "anomaly"
    db_url = f"sqlite:///{root / 'app.db'}"
    days = params.history_days + params.clean_days + 2 + TAIL.days
    replay_start = END - timedelta(days=params.clean_days + 2)
    incident_start = END - timedelta(days=2)
    injected = incidents(incident_start)
    started = time.monotonic()
    summary = simulate(
        db_url,
        users=params.users,
        items=params.items,
        days=days,
        seed=params.seed,
        end=END + TAIL,
        truth_dir=root / "truth",
        incidents=injected,
    )
    simulated = time.monotonic() - started
    bench_settings = settings.model_copy(
        update={"app_db_url": db_url, "anomaly_history_days": params.history_days,
                "lake_url": str(root / "lake")}
    )  # fmt: skip
    monitor = AnomalyMonitor(bench_settings)
    started = time.monotonic()
    monitor.poll(replay_start)
    seeded = time.monotonic() - started
    episodes = replay(monitor, replay_start, END)
    polls = int((END - replay_start) / timedelta(minutes=1))
    per_poll = (time.monotonic() - started - seeded) / polls
    clean = [(s, at) for s, at in episodes if at < incident_start.isoformat()]
    detections, stray = attribute(injected, [(s, at) for s, at in episodes if (s, at) not in clean])
    trough, publishing = volumes(monitor, replay_start)
    return AnomalyBenchReport(
        params=params,
        events=summary.experience_interactions,
        trough_events_per_hour=trough,
        issues_per_publishing_hour=publishing,
        polls=polls,
        seconds_per_poll=per_poll,
        seed_seconds=seeded,
        simulate_seconds=simulated,
        clean_alarms=clean,
        detections=detections,
        stray_alarms=stray,
        load_before=load_before,
        load_after=os.getloadavg(),
    )


def replay(monitor: AnomalyMonitor, start: datetime, end: datetime) -> list[tuple[str, str]]:
    """Poll once per minute from `start` to `end`; each (series, time) a series became active."""
    episodes = []
    active: set[str] = set()
    now = start
    while now < end:
        now += timedelta(minutes=1)
        found = {a.series for a in monitor.poll(now)}
        episodes += [(series, now.isoformat()) for series in sorted(found - active)]
        active = found
    return episodes


def attribute(
    injected: list[Incident], alarms: list[tuple[str, str]]
) -> tuple[list[Detection], list[tuple[str, str]]]:
    """Each incident's first alarm on its series (delay from its start); alarms that belong to
    no incident are stray (false alarms on the incident days)."""
    claimed: set[tuple[str, str]] = set()
    detections = []
    for incident in injected:
        end = incident.start + (incident.duration or timedelta(0)) + AFTERMATH
        mine = [
            (s, at)
            for s, at in alarms
            if incident.start <= datetime.fromisoformat(at) <= end
            and s.startswith(FIRES_ON[incident.kind])
        ]
        claimed |= set(mine)
        first = min((datetime.fromisoformat(at) for _, at in mine), default=None)
        delay = None if first is None else (first - incident.start) / timedelta(minutes=1)
        label = next(
            name
            for name, hour in INCIDENT_HOURS[incident.kind]
            if abs(incident.start.hour + incident.start.minute / 60 - hour) < 1e-9
        )
        detections.append(
            Detection(
                incident.kind.value,
                label,
                f"{incident.start:%Y-%m-%d %H:%M}",
                delay,
                sorted(
                    {
                        s
                        for s, at in mine
                        if first and datetime.fromisoformat(at) <= first + timedelta(minutes=5)
                    }
                ),
            )
        )
    return detections, [a for a in alarms if a not in claimed]


def volumes(monitor: AnomalyMonitor, day: datetime) -> tuple[int, float]:
    """Events in the quietest hour and issues per hour between 05:00 and 20:00, averaged over the
    history held by the monitor (what the per-minute counts are made of)."""
    days = monitor.past_days(minute_of(day))
    events = [i for i, n in enumerate(monitor.counters.names) if n.startswith("events:")]
    events.append(monitor.counters.index("impressions"))
    hourly = days[events].sum(axis=0).mean(axis=0).reshape(24, 60).sum(axis=1)
    issues = days[monitor.counters.index("new_issues")].mean(axis=0)
    return int(hourly.min()), float(issues[5 * 60 : 20 * 60].sum() / 15)


def format_report(report: AnomalyBenchReport) -> str:
    p = report.params
    lines = [
        f"`inbo bench-anomaly`: {p.users:,} users, {p.items:,} issues, seed {p.seed}; "
        f"{p.history_days} days of history, a clean week of {p.clean_days} days replayed minute by "
        f"minute through `AnomalyMonitor.poll`, then two incident days ({report.events:,} "
        f"interactions in all). The quietest hour has {report.trough_events_per_hour:,} events; "
        f"{report.issues_per_publishing_hour:.0f} issues are published per hour from 05:00 to "
        "20:00 UTC.",
        "",
        f"**False alarms in the clean week: {len(report.clean_alarms)}**"
        + (" (" + "; ".join(f"{s} at {at}" for s, at in report.clean_alarms) + ")" if report.clean_alarms else "")
        + f". Stray alarms on the incident days: {len(report.stray_alarms)}"
        + (" (" + "; ".join(f"{s} at {at}" for s, at in report.stray_alarms) + ")" if report.stray_alarms else "")
        + ".",
        "",
        "| incident | when | start (UTC) | detected after | series that fired (first 5 min) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for d in report.detections:
        delay = "not detected" if d.delay_minutes is None else f"{d.delay_minutes:.0f} min"
        lines.append(f"| {d.kind} | {d.label} | {d.start} | {delay} | {', '.join(d.series)} |")
    delays = {
        kind.value: [d.delay_minutes for d in report.detections if d.kind == kind.value]
        for kind in IncidentKind
    }
    worst = "; ".join(
        f"{kind} {'not always detected' if None in v else f'{max(v):.0f} min'}"  # type: ignore[type-var]
        for kind, v in delays.items()
    )
    before, after = (
        ", ".join(f"{x:.2f}" for x in load) for load in (report.load_before, report.load_after)
    )
    lines += [
        "",
        f"Worst delay per incident: {worst} (a delay counts whole polls: at minute t the monitor "
        "has seen the minutes before t). ",
        f"Polls: {report.polls:,} at {1000 * report.seconds_per_poll:.1f} ms each; seeding "
        f"{report.seed_seconds:.1f} s; simulating the world {report.simulate_seconds:.0f} s. "
        f"Load average (1, 5, 15 min) before the run: {before}; after: {after}.",
    ]  # fmt: skip
    return "\n".join(lines)


def write_doc(report: AnomalyBenchReport, doc: Path = DOC) -> None:
    replace_section(doc, SECTION, format_report(report), HEADING)


def as_json(report: AnomalyBenchReport) -> str:
    return json.dumps(asdict(report), indent=2)
