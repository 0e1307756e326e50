"""Is the platform serving fresh recommendations? One verdict for people, scripts and monitors.

`inbo status` prints it and exits with its code, so a cron job or a probe can act on it without
parsing text: 0 healthy, 1 stale (frontends read an old table), 3 down (they read nothing).
Read-only: it never starts the embedded Redis, whose not running is then the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from inbo.errors import ServiceUnavailable
from inbo.lake import batch_end
from inbo.settings import Settings, get_settings

log = logging.getLogger(__name__)


class State(StrEnum):
    """The platform's state, worst last; `exit_code` is what `inbo status` exits with."""

    HEALTHY = "healthy"
    STALE = "stale"
    DOWN = "down"

    @property
    def exit_code(self) -> int:
        return {State.HEALTHY: 0, State.STALE: 1, State.DOWN: 3}[self]


@dataclass(frozen=True)
class LiveTable:
    """The live version and how old the newest data in it is."""

    version: str
    users: int
    activated_at: str | None
    built_from_batch: str
    refreshed_through: str | None
    data_through: str
    """End of the newest interval the table reflects: the nightly batch or a later hourly one."""
    data_age_seconds: float


@dataclass(frozen=True)
class Health:
    state: State
    reasons: list[str]
    live: LiveTable | None = None
    last_ingest: dict[str, Any] | None = None
    last_refresh: dict[str, Any] | None = None
    """The newest hourly refresh of the live table (None if none ran on it yet)."""
    checked_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


def check_health(settings: Settings | None = None, *, now: datetime | None = None) -> Health:
    """The platform's state: down without a reachable Redis or a live table, stale when the
    newest data in the live table is older than `INBO_STALE_AFTER_SECONDS`, else healthy."""
    from inbo.services import running_redis
    from pipelines.publish.lifecycle import live_meta

    settings = settings or get_settings()
    ingest = _last_ingest(settings)
    try:
        with running_redis(settings) as client:
            meta = live_meta(client, settings.redis_prefix)
    except ServiceUnavailable as exc:
        return Health(State.DOWN, [str(exc)], last_ingest=ingest)
    if meta is None:
        reason = "no table is live: run `inbo demo` or the inbo_nightly DAG"
        return Health(State.DOWN, [reason], last_ingest=ingest)
    live = _live_table(meta, now or datetime.now(UTC))
    refresh = _last_refresh(settings, live)
    if live.data_age_seconds > settings.stale_after_seconds:
        reason = (
            f"the live table's newest data ends {live.data_through}, more than "
            f"{settings.stale_after_seconds / 3600:g} h ago (INBO_STALE_AFTER_SECONDS)"
        )
        return Health(State.STALE, [reason], live, ingest, refresh)
    return Health(State.HEALTHY, [], live, ingest, refresh)


def _live_table(meta: dict[str, Any], now: datetime) -> LiveTable:
    through = meta.get("refreshed_through") or meta["batch"]
    return LiveTable(
        version=meta["version"],
        users=meta["counts"]["users"],
        activated_at=meta.get("activated_at"),
        built_from_batch=meta["batch"],
        refreshed_through=meta.get("refreshed_through"),
        data_through=batch_end(through).isoformat(),
        data_age_seconds=round((now - batch_end(through)).total_seconds(), 1),
    )


def _last_ingest(settings: Settings) -> dict[str, Any] | None:
    from pipelines.ingest import latest_report

    report = latest_report(settings)
    if report is None:
        return None
    return {"batch": report.batch, "source": report.source, "completeness": report.completeness}


def _last_refresh(settings: Settings, live: LiveTable) -> dict[str, Any] | None:
    from dataclasses import asdict

    from pipelines.hourly import latest_refresh

    refresh = latest_refresh(settings, version=live.version, after=live.built_from_batch)
    return None if refresh is None else asdict(refresh)
