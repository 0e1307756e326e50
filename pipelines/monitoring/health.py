"""Is every part the platform depends on working? One check per part, one verdict over them all.

`inbo health` prints the report and exits with its level's code, the exporter's `/readyz` serves
it, and `inbo_health_level{check}` exposes each check. Down means frontends get no
recommendations (Redis unreachable, no live table); degraded means they still do, but something
needs an operator before it gets worse: a stale table, a failed run, a registry without its
champion, an app database the next ingest cannot read, a held batch, drifting counters.

Read-only, like `inbo status`: no check starts a service or writes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from inbo.durations import duration
from inbo.errors import InboError
from inbo.settings import Settings, get_settings

log = logging.getLogger(__name__)

MEMORY_HIGH_SHARE = 0.9
"""Share of Redis `maxmemory` in use past which the next table version may not fit beside the live one."""
NIGHTLY_DAG, HOURLY_DAG = "inbo_nightly", "inbo_hourly"
NIGHTLY_PERIOD_SECONDS = 24 * 3600


class Level(StrEnum):
    """A check's or the whole platform's level, best first; `exit_code` is `inbo health`'s."""

    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"

    @property
    def exit_code(self) -> int:
        return list(Level).index(self)


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    value: float | None = None
    """The check's main figure (bytes, seconds, a share), for the exporter."""


@dataclass(frozen=True)
class HealthReport:
    level: Level
    checks: list[Check]
    checked_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


@dataclass(frozen=True)
class DagRun:
    """The newest run of a DAG, as Airflow's metadata database records it."""

    dag_id: str
    state: str
    run_after: datetime
    end_date: datetime | None


def check_components(
    settings: Settings | None = None, *, now: datetime | None = None
) -> HealthReport:
    """Every check, each isolated: one that raises becomes a degraded check saying why."""
    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    checks = [_guarded(name, check, settings, now) for name, check in CHECKS.items()]
    worst = max((c.level for c in checks), key=lambda level: level.exit_code)
    return HealthReport(worst, checks, now.isoformat())


def _guarded(
    name: str, check: Callable[[Settings, datetime], Check], settings: Settings, now: datetime
) -> Check:
    try:
        return check(settings, now)
    except Exception as exc:  # a check must report, never take the report down with it
        log.warning(
            "health check %s failed: %s", name, exc, exc_info=not isinstance(exc, InboError)
        )
        level = Level.DOWN if name in ("redis", "live_table") else Level.DEGRADED
        return Check(name, level, f"could not check: {exc}")


def check_redis(settings: Settings, now: datetime) -> Check:
    """Reachable, room for the next version beside the live one, and a working persistence."""
    from inbo.errors import ServiceUnavailable
    from inbo.services import running_redis

    try:
        with running_redis(settings) as client:
            memory = client.info("memory")
            persistence = client.info("persistence")
    except ServiceUnavailable as exc:
        return Check("redis", Level.DOWN, str(exc))
    used, limit = int(memory["used_memory"]), int(memory.get("maxmemory", 0))
    detail = f"{used / 2**20:,.1f} MiB used" + (f" of {limit / 2**20:,.0f} MiB" if limit else "")
    problems = persistence_problems(persistence)
    if limit and used > MEMORY_HIGH_SHARE * limit:
        problems.append(f"over {MEMORY_HIGH_SHARE:.0%} of maxmemory: the next version may not fit")
    level = Level.DEGRADED if problems else Level.OK
    return Check("redis", level, "; ".join([detail, *problems]), float(used))


def persistence_problems(persistence: dict[str, Any]) -> list[str]:
    """What in `INFO persistence` means a restart would lose tables, or a save is failing."""
    problems = [
        f"{name} is {persistence[name]}"
        for name in ("rdb_last_bgsave_status", "aof_last_bgrewrite_status", "aof_last_write_status")
        if persistence.get(name, "ok") != "ok"
    ]
    if not int(persistence.get("aof_enabled", 0)) and not int(persistence.get("rdb_saves", 1)):
        problems.append("no append-only log and no snapshot yet: a restart loses every table")
    return problems


def check_live_table(settings: Settings, now: datetime) -> Check:
    """The freshness verdict of `inbo status`: stale degrades, no table is down."""
    from pipelines.health import State, check_health

    health = check_health(settings, now=now)
    level = {State.HEALTHY: Level.OK, State.STALE: Level.DEGRADED, State.DOWN: Level.DOWN}
    if health.live is None:
        return Check("live_table", level[health.state], "; ".join(health.reasons))
    live = health.live
    detail = (
        f"{live.version}: {live.users:,} users, data to {live.data_through} "
        f"({duration(live.data_age_seconds)} ago, SLA {duration(settings.stale_after_seconds)})"
    )
    return Check("live_table", level[health.state], detail, live.data_age_seconds)


def check_nightly_run(settings: Settings, now: datetime) -> Check:
    return _dag_check("nightly_run", NIGHTLY_DAG, NIGHTLY_PERIOD_SECONDS, settings, now)


def check_hourly_run(settings: Settings, now: datetime) -> Check:
    return _dag_check(
        "hourly_run", HOURLY_DAG, schedule_period(settings.hourly_schedule), settings, now
    )


def _dag_check(name: str, dag_id: str, period: float, settings: Settings, now: datetime) -> Check:
    """The newest run succeeded (or is running) and started within two schedule periods."""
    runs = last_dag_runs(settings)
    run = runs.get(dag_id)
    if run is None:
        return Check(
            name, Level.DEGRADED, f"{dag_id} has never run (Airflow metadata DB: {_db(settings)})"
        )
    age = (now - run.run_after).total_seconds()
    detail = f"{dag_id} {run.state}, {duration(age)} ago"
    if run.state == "failed":
        return Check(name, Level.DEGRADED, f"{detail}: see its task logs", age)
    if age > 2 * period:
        return Check(name, Level.DEGRADED, f"{detail}: none for two periods (paused?)", age)
    return Check(name, Level.OK, detail, age)


def last_dag_runs(settings: Settings) -> dict[str, DagRun]:
    """The newest run of each DAG, read from Airflow's metadata database with SQL (the library
    does not import Airflow); empty when there is no database yet."""
    from sqlalchemy import create_engine, inspect, text

    if missing_sqlite_file(settings.airflow_db):
        return {}
    engine = create_engine(settings.airflow_db, connect_args=_connect_timeout(settings.airflow_db))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("dag_run"):
                return {}
            rows = conn.execute(
                text(
                    "SELECT dag_id, state, run_after, end_date FROM dag_run r WHERE run_after = "
                    "(SELECT MAX(run_after) FROM dag_run WHERE dag_id = r.dag_id)"
                )
            ).all()
    finally:
        engine.dispose()
    return {
        row.dag_id: DagRun(row.dag_id, row.state, _utc(row.run_after), _utc(row.end_date))
        for row in rows
    }


def check_mlflow_registry(settings: Settings, now: datetime) -> Check:
    """Each registered model has a `champion`: the next nightly scores with it."""
    from pipelines.registry import ModelKind, alias_version

    if missing_sqlite_file(settings.mlflow_uri):
        return Check("mlflow_registry", Level.DEGRADED, f"no registry at {settings.mlflow_uri}")
    champions = {kind.value: alias_version(settings, kind.value, "champion") for kind in ModelKind}
    missing = sorted(kind for kind, version in champions.items() if version is None)
    shown = ", ".join(f"{kind} v{version}" for kind, version in champions.items() if version)
    if missing:
        return Check("mlflow_registry", Level.DEGRADED, f"no champion for {', '.join(missing)}")
    return Check("mlflow_registry", Level.OK, f"champions: {shown}")


def check_app_database(settings: Settings, now: datetime) -> Check:
    """The app database answers: the next ingest reads it."""
    from sqlalchemy import create_engine, text

    if missing_sqlite_file(settings.app_db):
        return Check("app_database", Level.DEGRADED, f"no database at {settings.app_db}")
    engine = create_engine(settings.app_db, connect_args=_connect_timeout(settings.app_db))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return Check("app_database", Level.DEGRADED, f"unreachable: {type(exc).__name__}")
    finally:
        engine.dispose()
    return Check("app_database", Level.OK, engine.url.render_as_string(hide_password=True))


def check_stream_worker(settings: Settings, now: datetime) -> Check:
    return Check("stream_worker", Level.OK, "not configured: no event stream in this deployment")


def check_last_batch(settings: Settings, now: datetime) -> Check:
    """The newest batch converted its rows and validation did not hold it."""
    from inbo.errors import DataNotFound
    from inbo.lake import Lake
    from pipelines.ingest import latest_report
    from pipelines.validate import HELD, read_report

    ingest = latest_report(settings)
    if ingest is None:
        return Check("last_batch", Level.DEGRADED, "no batch has been ingested yet")
    converted = ingest.conversion_rate
    detail = f"{ingest.batch}: {converted:.2%} of event rows converted"
    try:
        validation = read_report(Lake(settings.lake), ingest.batch)
    except DataNotFound:
        return Check("last_batch", Level.DEGRADED, f"{detail}; not validated yet", converted)
    worst = max(validation.bad_share.items(), key=lambda kv: kv[1], default=("", 0.0))
    detail += f", worst bad share {worst[1]:.2%} ({worst[0] or 'none'}), {validation.status}"
    held = validation.status == HELD or 1 - converted > settings.quarantine_threshold
    return Check("last_batch", Level.DEGRADED if held else Level.OK, detail, converted)


def check_reconciliation(settings: Settings, now: datetime) -> Check:
    """The app's counters agree with the warehouse within `INBO_RECONCILE_TARGET`."""
    from pipelines.reconcile import latest_report

    report = latest_report(settings)
    if report is None:
        return Check("reconciliation", Level.OK, "never run (`inbo reconcile`)")
    detail = (
        f"{report.batch}: {report.inconsistency_rate:.2%} of items drifted "
        f"(target {report.target:.2%})"
    )
    level = Level.OK if report.within_target else Level.DEGRADED
    return Check("reconciliation", level, detail, report.inconsistency_rate)


CHECKS: dict[str, Callable[[Settings, datetime], Check]] = {
    "redis": check_redis,
    "live_table": check_live_table,
    "nightly_run": check_nightly_run,
    "hourly_run": check_hourly_run,
    "mlflow_registry": check_mlflow_registry,
    "app_database": check_app_database,
    "stream_worker": check_stream_worker,
    "last_batch": check_last_batch,
    "reconciliation": check_reconciliation,
}


def schedule_period(expression: str) -> float:
    """Seconds between two consecutive ticks of a cron expression (its first two from now)."""
    from croniter import croniter

    ticks = croniter(expression, datetime.now(UTC))
    first = ticks.get_next(float)
    return float(ticks.get_next(float) - first)


def missing_sqlite_file(url: str) -> bool:
    """A SQLite URL whose file does not exist: connecting would create it, and checks only read."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    return (
        parsed.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not (Path(database).exists())
    )


def _connect_timeout(url: str) -> dict[str, Any]:
    return {"timeout": 5} if url.startswith("sqlite") else {"connect_timeout": 5}


def _db(settings: Settings) -> str:
    from sqlalchemy import make_url

    return make_url(settings.airflow_db).render_as_string(hide_password=True)


def _utc(value: datetime | str | None) -> Any:
    """Airflow stores UTC; SQLite hands it back naive or as text."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
