"""`inbo exporter`: one always-on process serving `/metrics`, `/healthz` and `/readyz`.

Two loops feed it: the metrics snapshot (`PlatformCollector.refresh`, every
`INBO_EXPORTER_REFRESH_SECONDS`) and the anomaly monitor (`AnomalyMonitor.poll`, every
`INBO_ANOMALY_POLL_SECONDS`), so detection runs continuously, not only when the hourly DAG does.

`/healthz` is liveness: 200 while the process serves. `/readyz` is readiness in Kubernetes' sense,
"can the platform serve recommendations": 200 when the health checks are ok or degraded (frontends
still get their tables), 503 when down; the body is the health report as JSON either way.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from inbo.settings import Settings
from pipelines.monitoring.health import Level, check_components
from pipelines.monitoring.metrics import PlatformCollector

log = logging.getLogger(__name__)


@dataclass
class AnomalyState:
    """What the anomaly loop last saw: active anomalies by series, and episodes counted."""

    active: dict[str, Any] = field(default_factory=dict)
    episodes: dict[str, int] = field(default_factory=dict)
    series: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, anomalies: list[Any], series: list[str]) -> None:
        with self.lock:
            now_active = {a.series: a for a in anomalies}
            for name in now_active.keys() - self.active.keys():  # a new episode starts
                self.episodes[name] = self.episodes.get(name, 0) + 1
            self.active, self.series = now_active, series

    def families(self) -> list[Metric]:
        with self.lock:
            active = GaugeMetricFamily(
                "inbo_anomaly_active", "1 while a series is anomalous.", labels=["series"]
            )
            score = GaugeMetricFamily(
                "inbo_anomaly_score",
                "How anomalous a series is now (0 when not).",
                labels=["series"],
            )
            total = CounterMetricFamily(
                "inbo_anomalies", "Anomaly episodes seen since start.", labels=["series"]
            )
            for name in sorted(set(self.series) | self.active.keys()):
                found = self.active.get(name)
                active.add_metric([name], 1 if found else 0)
                score.add_metric([name], found.score if found else 0.0)
                total.add_metric([name], self.episodes.get(name, 0))
            return [active, score, total]


class Exporter:
    """The HTTP server and its two background loops; `serve_forever` until `stop`."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.settings = settings
        self.collector = PlatformCollector(settings)
        self.anomalies = AnomalyState()
        self.collector.extra.append(self.anomalies.families)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start_loops(self) -> list[threading.Thread]:
        loops = [
            (self.collector.refresh, self.settings.exporter_refresh_seconds, "metrics"),
            (self._poll_anomalies(), self.settings.anomaly_poll_seconds, "anomalies"),
        ]
        threads = [
            threading.Thread(target=self._every, args=(work, seconds), name=name, daemon=True)
            for work, seconds, name in loops
        ]
        for thread in threads:
            thread.start()
        return threads

    def serve_forever(self) -> None:
        self.start_loops()
        log.info("exporter listening on %s", self.url)
        self.server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _every(self, work: Callable[[], None], seconds: float) -> None:
        while not self._stop.is_set():
            try:
                work()
            except Exception:  # a loop must outlive one bad round
                log.exception("exporter loop %s failed", threading.current_thread().name)
            self._stop.wait(seconds)

    def _poll_anomalies(self) -> Callable[[], None]:
        """The anomaly monitor's loop body; the monitor is built once, in the loop's thread
        (it seeds its history from the app database, which takes a moment)."""
        monitor: list[Any] = []

        def poll() -> None:
            from pipelines.monitoring.anomaly import AnomalyMonitor

            if not monitor:
                monitor.append(AnomalyMonitor(self.settings))
            found = monitor[0].poll(datetime.now(UTC))
            self.anomalies.update(found, list(monitor[0].series_names))

        return poll

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(exporter.registry))
                elif path == "/healthz":
                    self._send(200, "text/plain; charset=utf-8", b"ok\n")
                elif path == "/readyz":
                    report = check_components(exporter.settings)
                    code = 503 if report.level is Level.DOWN else 200
                    body = json.dumps(asdict(report), indent=2).encode()
                    self._send(code, "application/json", body)
                else:
                    self._send(404, "text/plain; charset=utf-8", b"/metrics, /healthz, /readyz\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        return Handler
