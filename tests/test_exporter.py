"""`inbo exporter`: /metrics, /healthz and /readyz over real HTTP, against a real Redis and lake."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inbo.lake import Lake, batch_key
from inbo.settings import Settings
from pipelines.health import check_health
from pipelines.monitoring.exporter import AnomalyState, Exporter
from pipelines.monitoring.metrics import MAX_SEGMENTS, activity_families, capped
from pipelines.offline.synthetic import make_fallback, make_recs, write_score_output

BATCH_END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def published(live_redis: Settings) -> Settings:
    from pipelines.publish.steps import publish_table

    lake = Lake(live_redis.lake)
    write_score_output(lake, batch_key(BATCH_END), make_recs(40, 5), make_fallback(), shards=1)
    publish_table(BATCH_END, live_redis)
    return live_redis


@contextmanager
def serving(settings: Settings) -> Iterator[Exporter]:
    """An exporter on a free port with one snapshot taken, served from a thread."""
    exporter = Exporter(settings, "127.0.0.1", 0)
    exporter.collector.refresh()
    thread = threading.Thread(target=exporter.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield exporter
    finally:
        exporter.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_describe_the_live_table_as_status_sees_it(published: Settings) -> None:
    with serving(published) as exporter:
        code, text = get(f"{exporter.url}/metrics")
    found = samples(text)

    assert code == 200
    assert found[("inbo_live_table_users", ())] == 40  # the 40 users make_recs published
    status_age = check_health(published).live.data_age_seconds
    assert found[("inbo_live_table_age_seconds", ())] == pytest.approx(status_age, abs=60)
    assert found[("inbo_table_versions", (("status", "live"),))] == 1
    assert found[("inbo_health_level", (("check", "redis"),))] == 0
    assert found[("inbo_redis_memory_per_user_bytes", ())] > 0
    assert found[("inbo_scrape_errors_total", (("source", "redis"),))] == 0


def test_probes_follow_the_platform_and_a_dead_redis_only_removes_its_metrics(
    published: Settings,
) -> None:
    dead = published.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with serving(published) as exporter:
        ready, _ = get(f"{exporter.url}/readyz")
    with serving(dead) as exporter:
        alive, _ = get(f"{exporter.url}/healthz")
        not_ready, body = get(f"{exporter.url}/readyz")
        _, text = get(f"{exporter.url}/metrics")
    found = samples(text)

    assert ready == 200  # degraded (no Airflow runs here) still serves: ready
    assert alive == 200 and not_ready == 503
    assert json.loads(body)["level"] == "down"
    assert found[("inbo_scrape_errors_total", (("source", "redis"),))] == 1
    assert ("inbo_live_table_users", ()) not in found
    assert found[("inbo_health_level", (("check", "redis"),))] == 2


def test_activity_counts_ctr_per_surface_source_and_variant_in_each_window() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    recent, earlier = now - timedelta(seconds=30), now - timedelta(minutes=30)
    feed = json.dumps({"table_version": "v", "source": "als", "variant": "A"})
    rows = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2, 3, 3],
            "kind": ["impression", "click", "impression", "impression", "impression", "hide"],
            "surface": ["feed", "feed", "feed", "feed", "email", "email"],
            "rec_context": [feed, feed, feed, feed, None, None],
            "recorded_at": [recent, recent, earlier, earlier, earlier, earlier],
        }
    )
    rows["recorded_at"] = rows["recorded_at"].dt.tz_localize(None)
    reads = pd.DataFrame({"user_id": [1], "updated_at": [recent.replace(tzinfo=None)]})

    found = samples_of(activity_families(rows, reads, now))

    feed_hour = (("source", "als"), ("surface", "feed"), ("variant", "A"), ("window", "1h"))
    feed_minute = (("source", "als"), ("surface", "feed"), ("variant", "A"), ("window", "1m"))
    assert found[("inbo_app_impressions", feed_hour)] == 3
    assert found[("inbo_app_ctr_ratio", feed_hour)] == pytest.approx(1 / 3)
    assert found[("inbo_app_ctr_ratio", feed_minute)] == 1.0  # 1 impression, 1 click
    email = (("source", "none"), ("surface", "email"), ("variant", "none"), ("window", "1h"))
    assert found[("inbo_app_clicks", email)] == 0  # a hide is not a click
    # 1 completed read; active users: 3 in the hour, 1 in the minute
    assert found[("inbo_app_reads_per_active_user", (("window", "1h"),))] == pytest.approx(1 / 3)
    assert found[("inbo_app_reads_per_active_user", (("window", "1m"),))] == 1.0


def samples_of(families: list) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_label_sets_are_capped_and_the_rest_summed_as_other() -> None:
    sizes = pd.Series(
        {("feed", f"s{i}", "A", "impression"): 100 - i for i in range(MAX_SEGMENTS + 5)}
    )
    kept = capped(sizes)

    assert len(kept) == MAX_SEGMENTS + 1
    assert kept[("other", "other", "other")]["impression"] == sum(100 - i for i in range(50, 55))


def test_an_anomaly_episode_counts_once_however_long_it_lasts() -> None:
    state = AnomalyState()
    outage = SimpleNamespace(series="ctr:feed:als", score=9.0)
    for found in ([outage], [outage], [], [outage]):
        state.update(found, ["ctr:feed:als", "impressions"])
    active, score, total = (samples_of([f]) for f in state.families())

    assert total[("inbo_anomalies_total", (("series", "ctr:feed:als"),))] == 2
    assert total[("inbo_anomalies_total", (("series", "impressions"),))] == 0
    assert active[("inbo_anomaly_active", (("series", "ctr:feed:als"),))] == 1
    assert score[("inbo_anomaly_score", (("series", "ctr:feed:als"),))] == 9.0
