"""Alerts to people: a failed task, a failed run, a run past its deadline, logged and posted to a
chat webhook.

`send_alert` always logs; when `INBO_ALERT_WEBHOOK_URL` is set it also POSTs Slack-compatible JSON
(`text` plus `blocks`, which Slack incoming webhooks, Mattermost and most chat receivers accept).
The Airflow callbacks in `dags/common.py` build the `Alert`; this module never imports Airflow.

An alert must not fail the task it reports or hide that task's error: a post that fails after its
retries is logged and dropped, never raised.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from inbo.settings import Settings, get_settings

log = logging.getLogger(__name__)

POST_TIMEOUT_SECONDS = 5.0
POST_ATTEMPTS = 3
RETRY_BACKOFF_SECONDS = 1.0
"""Wait before the second attempt, doubled before each next one: 3 tries take at most 18 s."""
ERROR_CHARS = 300
"""A chat line, not a traceback: the log link has the rest."""


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


@dataclass(frozen=True)
class Alert:
    title: str
    severity: Severity
    dag: str
    run: str
    when: datetime
    task: str | None = None
    try_number: int | None = None
    error: str = ""
    log_url: str | None = None


def one_line(error: BaseException | str | None) -> str:
    """`Type: message` on one line, cut to `ERROR_CHARS`; empty for no error."""
    if error is None:
        return ""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    flat = " ".join(text.split())
    return flat if len(flat) <= ERROR_CHARS else flat[: ERROR_CHARS - 1] + "…"


def summary(alert: Alert) -> str:
    """The alert as one line: the log line, and the chat text a notification preview shows."""
    where = f"{alert.dag}.{alert.task}" if alert.task else alert.dag
    attempt = f" try {alert.try_number}" if alert.try_number else ""
    error = f": {alert.error}" if alert.error else ""
    return f"[{alert.severity}] {alert.title}: {where} run {alert.run}{attempt}{error}"


def payload(alert: Alert) -> dict[str, Any]:
    """Slack-compatible JSON: `text` says it all alone; `blocks` lay it out for Slack's UI."""
    fields = [
        ("DAG", alert.dag),
        ("Task", alert.task),
        ("Run", alert.run),
        ("Try", str(alert.try_number) if alert.try_number else None),
        ("When", alert.when.isoformat()),
        ("Severity", alert.severity.value),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": alert.title}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in fields if value
            ],
        },
    ]
    if alert.error:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{alert.error}```"}}
        )
    if alert.log_url:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"<{alert.log_url}|Task log>"}}
        )
    text = summary(alert) + (f" (log: {alert.log_url})" if alert.log_url else "")
    return {"text": text, "blocks": blocks}


def send_alert(alert: Alert, settings: Settings | None = None) -> bool:
    """Log the alert and post it to the webhook if one is configured; True if a receiver took it."""
    settings = settings or get_settings()
    level = logging.ERROR if alert.severity is Severity.CRITICAL else logging.WARNING
    log.log(level, "alert %s", summary(alert))
    if not settings.alert_webhook_url:
        return False
    return post(settings.alert_webhook_url, payload(alert))


def post(url: str, body: dict[str, Any]) -> bool:
    """POST JSON with a short timeout, `POST_ATTEMPTS` tries; a failure is logged, not raised."""
    data = json.dumps(body).encode()
    delay = RETRY_BACKOFF_SECONDS
    for attempt in range(1, POST_ATTEMPTS + 1):
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT_SECONDS):
                return True
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            if exc.code < 500 and exc.code != 429:  # the receiver refuses this body: no retry helps
                break
        except (OSError, ValueError) as exc:  # refused, timed out, unresolvable, malformed URL
            problem = one_line(exc)
        if attempt < POST_ATTEMPTS:
            time.sleep(delay)
            delay *= 2
    log.warning("alert webhook %s failed after %d tries: %s", redact(url), attempt, problem)
    return False


def redact(url: str) -> str:
    """Scheme and host only: a webhook URL's path is its secret."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/…"
