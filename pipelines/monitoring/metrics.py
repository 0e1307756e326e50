"""The platform's state as Prometheus metrics: what `inbo exporter` serves on `/metrics`.

Each source (Redis, the lake's reports, Airflow's runs, MLflow, the app database, the health
checks) is read by one function returning metric families. `PlatformCollector.refresh` runs them
all, each isolated: a source that fails leaves its metrics out of the snapshot and counts one
`inbo_scrape_errors_total{source}`, so one unreachable service never blanks the others. Scrapes
serve the latest snapshot, so a scrape costs nothing however slow MLflow is.

Names follow Prometheus conventions: base units (`_seconds`, `_bytes`, `_ratio`), `_total` for
counters, labels from bounded sets (surfaces, sources and variants seen in the last hour, capped).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inbo.settings import Settings

log = logging.getLogger(__name__)

WINDOWS = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1)}
"""The windows app activity is reported over."""
MAX_SEGMENTS = 50
"""Cap on (surface, source, variant) label sets: the rest are summed as `other`."""
MODEL_METRICS = ("ndcg_at_10", "recall_at_10", "map_at_10", "precision_at_10", "mrr_at_10")


def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def health_metrics(settings: Settings, now: datetime) -> list[Metric]:
    from pipelines.monitoring.health import check_components

    report = check_components(settings, now=now)
    level = gauge("inbo_health_level", "Health check level: 0 ok, 1 degraded, 2 down.", ["check"])
    for check in report.checks:
        level.add_metric([check.name], check.level.exit_code)
    overall = gauge("inbo_health_overall_level", "Worst health check level (inbo health's exit).")
    overall.add_metric([], report.level.exit_code)
    return [level, overall]


def redis_metrics(settings: Settings, now: datetime) -> list[Metric]:
    """The live table (age, users, publish speed), the versions by status, Redis memory."""
    from inbo.lake import batch_end
    from inbo.services import running_redis
    from pipelines.publish.lifecycle import list_versions, live_meta

    with running_redis(settings) as client:
        meta = live_meta(client, settings.redis_prefix)
        versions = list_versions(
            client, settings.redis_prefix, rollback_window_seconds=settings.version_ttl_seconds
        )
        used = int(client.info("memory")["used_memory"])
    memory = gauge("inbo_redis_used_memory_bytes", "Memory the platform's Redis uses.")
    memory.add_metric([], used)
    by_status = gauge("inbo_table_versions", "Table versions in Redis by status.", ["status"])
    for status, count in sorted(Counter(v.status for v in versions).items()):
        by_status.add_metric([status], count)
    families: list[Metric] = [memory, by_status]
    if meta is None:
        return families
    users = meta["counts"]["users"]
    through = batch_end(meta.get("refreshed_through") or meta["batch"])
    info = gauge("inbo_live_table_info", "The live table version (value 1).", ["version", "batch"])
    info.add_metric([meta["version"], meta["batch"]], 1)
    age = gauge("inbo_live_table_age_seconds", "Age of the newest data the live table reflects.")
    age.add_metric([], (now - through).total_seconds())
    published = gauge("inbo_live_table_users", "Users with a personal row in the live table.")
    published.add_metric([], users)
    refreshes = gauge("inbo_live_table_refreshes", "Hourly refreshes applied to the live table.")
    refreshes.add_metric([], meta.get("refreshes", 0))
    per_user = gauge("inbo_redis_memory_per_user_bytes", "Redis used memory per published user.")
    per_user.add_metric([], used / users if users else 0.0)
    families += [info, age, published, refreshes, per_user]
    if meta.get("activated_at") and meta.get("created_at"):
        took = (_moment(meta["activated_at"]) - _moment(meta["created_at"])).total_seconds()
        seconds = gauge("inbo_publish_duration_seconds", "Last nightly publish, begin to activate.")
        seconds.add_metric([], took)
        speed = gauge("inbo_publish_users_per_second", "Users published per second, last nightly.")
        speed.add_metric([], users / took if took > 0 else 0.0)
        families += [seconds, speed]
    return families


def batch_metrics(settings: Settings, now: datetime) -> list[Metric]:
    """Quarantine and conversion rates per table of the newest batch."""
    from inbo.errors import DataNotFound
    from inbo.lake import Lake
    from pipelines.hourly import latest_refresh
    from pipelines.ingest import latest_report
    from pipelines.validate import read_report

    ingest = latest_report(settings)
    if ingest is None:
        return []
    conversion = gauge(
        "inbo_batch_conversion_ratio",
        "Share of a table's extracted rows that converted.",
        ["table"],
    )
    for table, extracted in sorted(ingest.extracted.items()):
        if extracted and table in ingest.converted:  # publishers convert into items, not alone
            conversion.add_metric([table], ingest.converted[table] / extracted)
    families: list[Metric] = [conversion]
    try:
        validation = read_report(Lake(settings.lake), ingest.batch)
    except DataNotFound:
        validation = None
    if validation is not None:
        quarantine = gauge(
            "inbo_batch_quarantine_ratio",
            "Bad-row share of a table in the newest batch (ingest's quarantine included).",
            ["table"],
        )
        for table, share in sorted(validation.bad_share.items()):
            quarantine.add_metric([table], share)
        held = gauge("inbo_batch_held", "1 when validation held the newest batch.")
        held.add_metric([], 1 if validation.status == "held" else 0)
        families += [quarantine, held]
    refresh = latest_refresh(settings)
    if refresh is not None and refresh.freshness_seconds is not None:
        fresh = gauge(
            "inbo_freshness_seconds", "Newest event to published, in the last hourly refresh."
        )
        fresh.add_metric([], refresh.freshness_seconds)
        families.append(fresh)
    return families


def dag_metrics(settings: Settings, now: datetime) -> list[Metric]:
    from pipelines.monitoring.health import last_dag_runs

    success = gauge("inbo_dag_last_run_success", "1 when a DAG's newest run succeeded.", ["dag"])
    failed = gauge("inbo_dag_last_run_failed", "1 when a DAG's newest run failed.", ["dag"])
    age = gauge("inbo_dag_last_run_age_seconds", "Time since a DAG's newest run.", ["dag"])
    for dag_id, run in sorted(last_dag_runs(settings).items()):
        success.add_metric([dag_id], 1 if run.state == "success" else 0)
        failed.add_metric([dag_id], 1 if run.state == "failed" else 0)
        age.add_metric([dag_id], (now - run.run_after).total_seconds())
    return [success, failed, age]


def model_metrics(settings: Settings, now: datetime) -> list[Metric]:
    """Held-out metrics of the champion and challenger of each model, from their MLflow runs."""
    from pipelines.monitoring.health import missing_sqlite_file
    from pipelines.registry import ModelKind, alias_version, version_run

    if missing_sqlite_file(settings.mlflow_uri):  # no registry yet; reading must not create one
        return []
    version = gauge("inbo_model_version", "Registry version behind an alias.", ["model", "alias"])
    metric = gauge(
        "inbo_model_metric", "Held-out metric of an aliased model.", ["model", "alias", "metric"]
    )
    for kind in ModelKind:
        for alias in ("champion", "challenger"):
            number = alias_version(settings, kind.value, alias)
            if number is None:
                continue
            version.add_metric([kind.value, alias], number)
            logged = version_run(settings, kind.value, number).metrics
            for name in MODEL_METRICS:
                if name in logged:
                    metric.add_metric([kind.value, alias, name], logged[name])
    return [version, metric]


def reconcile_metrics(settings: Settings, now: datetime) -> list[Metric]:
    from pipelines.reconcile import latest_report

    report = latest_report(settings)
    if report is None:
        return []
    drift = gauge("inbo_reconcile_drift_ratio", "Share of items whose app counters drifted.")
    drift.add_metric([], report.inconsistency_rate)
    checked = gauge("inbo_reconcile_items_checked", "Items the newest reconciliation compared.")
    checked.add_metric([], report.items_checked)
    return [drift, checked]


def app_metrics(settings: Settings, now: datetime) -> list[Metric]:
    """Impressions, clicks, CTR and reads per active user over the last minute and hour."""
    import pandas as pd
    from sqlalchemy import select

    from inbo import app_schema
    from pipelines.app.database import app_engine

    table = app_schema.experience_interactions
    since = _naive(now - max(WINDOWS.values()))
    query = select(
        table.c.user_id, table.c.kind, table.c.surface, table.c.rec_context, table.c.recorded_at
    ).where(table.c.recorded_at > since, table.c.recorded_at <= _naive(now))
    progress = app_schema.reading_progress
    reads_query = select(progress.c.user_id, progress.c.updated_at).where(
        progress.c.updated_at > since, progress.c.progress >= settings.continue_reading_max
    )
    engine = app_engine(settings.app_db)
    try:
        with engine.connect() as conn:
            rows = pd.read_sql(query, conn)
            reads = pd.read_sql(reads_query, conn)
    finally:
        engine.dispose()
    return activity_families(rows, reads, now)


def activity_families(rows: Any, reads: Any, now: datetime) -> list[Metric]:
    """The app activity metrics from interaction rows and completed reads (pure, for tests)."""
    import pandas as pd

    labels = ["window", "surface", "source", "variant"]
    impressions = gauge("inbo_app_impressions", "Impressions in the window.", labels)
    clicks = gauge("inbo_app_clicks", "Clicks in the window.", labels)
    ctr = gauge("inbo_app_ctr_ratio", "Clicks per impression in the window.", labels)
    readers = gauge(
        "inbo_app_reads_per_active_user", "Completed reads per active user.", ["window"]
    )
    rows = rows[rows["kind"].isin(["impression", "click"])].copy()
    context = rows["rec_context"].map(_context)
    rows["source"] = [c.get("source", "none") for c in context]
    rows["variant"] = [c.get("variant", "none") for c in context]
    rows["surface"] = rows["surface"].fillna("none")
    recorded = pd.to_datetime(rows["recorded_at"])
    for window, length in WINDOWS.items():
        start = pd.Timestamp(_naive(now - length))
        recent = rows[(recorded > start).to_numpy()]
        counts = capped(recent.groupby(["surface", "source", "variant", "kind"]).size())
        for (surface, source, variant), by_kind in counts.items():
            shown, clicked = by_kind.get("impression", 0), by_kind.get("click", 0)
            key = [window, surface, source, variant]
            impressions.add_metric(key, shown)
            clicks.add_metric(key, clicked)
            if shown:
                ctr.add_metric(key, clicked / shown)
        active = recent["user_id"].nunique()
        completed = int((pd.to_datetime(reads["updated_at"]) > start).sum())
        readers.add_metric([window], completed / active if active else 0.0)
    return [impressions, clicks, ctr, readers]


def capped(sizes: Any) -> dict[tuple[str, str, str], dict[str, int]]:
    """Counts per (surface, source, variant) and kind; past `MAX_SEGMENTS` sets, `other`."""
    grouped: dict[tuple[str, str, str], Counter[str]] = {}
    for (surface, source, variant, kind), count in sizes.items():
        grouped.setdefault((str(surface), str(source), str(variant)), Counter())[kind] += int(count)
    ranked = sorted(grouped.items(), key=lambda kv: -sum(kv[1].values()))
    kept = dict(ranked[:MAX_SEGMENTS])
    if len(ranked) > MAX_SEGMENTS:
        other: Counter[str] = Counter()
        for _, counts in ranked[MAX_SEGMENTS:]:
            other.update(counts)
        kept[("other", "other", "other")] = other
    return {key: dict(counts) for key, counts in kept.items()}


SOURCES: dict[str, Callable[[Settings, datetime], list[Metric]]] = {
    "health": health_metrics,
    "redis": redis_metrics,
    "batch": batch_metrics,
    "airflow": dag_metrics,
    "mlflow": model_metrics,
    "reconcile": reconcile_metrics,
    "app_db": app_metrics,
}


class PlatformCollector(Collector):
    """Serves the latest snapshot of every source; `refresh` (the exporter's loop) renews it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._snapshot: list[Metric] = []
        self._errors: Counter[str] = Counter()
        self._seconds: dict[str, float] = {}
        self._refreshed_at: float | None = None
        self.extra: list[Callable[[], list[Metric]]] = []
        """More families to serve as they are (the anomaly monitor's)."""

    def refresh(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        families: list[Metric] = []
        for name, source in SOURCES.items():
            started = time.perf_counter()
            try:
                families += source(self.settings, now)
            except Exception as exc:  # an unreachable source leaves only its own metrics out
                log.warning("metrics source %s failed: %s", name, exc)
                with self._lock:
                    self._errors[name] += 1
            self._seconds[name] = time.perf_counter() - started
        with self._lock:
            self._snapshot = families
            self._refreshed_at = time.time()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._snapshot
            errors = CounterMetricFamily(
                "inbo_scrape_errors", "Failed reads of a metrics source.", labels=["source"]
            )
            for name in SOURCES:
                errors.add_metric([name], self._errors[name])
            took = gauge(
                "inbo_source_read_seconds", "Time the last read of a source took.", ["source"]
            )
            for name, seconds in self._seconds.items():
                took.add_metric([name], seconds)
            yield errors
            yield took
            if self._refreshed_at is not None:
                stamp = gauge("inbo_exporter_last_refresh_timestamp_seconds", "Last snapshot time.")
                stamp.add_metric([], self._refreshed_at)
                yield stamp
        for extra in self.extra:
            yield from extra()


def _context(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        found = json.loads(raw)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _naive(moment: datetime) -> datetime:
    """The app database stores naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)
