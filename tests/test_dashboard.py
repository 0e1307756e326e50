"""The analytics dashboard: its metrics on hand-made lists, and the page the nightly DAG writes,
opened in a real headless Chromium with the network cut off.

The world runs two nights: the first through the library steps (as `inbo ingest`, `inbo train`,
... do), the second through the nightly DAG (`dag.test()`), whose `write_dashboard` task writes
the page; so every section reads what the platform really wrote, and drift and model history
have a previous night to compare with.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inbo import tables
from inbo.lake import Lake, batch_key
from inbo.settings import REPO_ROOT, Settings
from pipelines.monitoring.dashboard import (
    SEGMENTS,
    activity,
    build_dashboard,
    context_counts,
    coverage,
    diversity,
    engagement_section,
    feature_drift,
    model_history,
    novelty,
    reads_per_user,
    sample_users,
)
from tests.browser import open_offline

# -- the metrics, on lists worked out by hand -------------------------------------------------------


def test_coverage_is_the_share_of_the_catalogue_recommended_to_anyone() -> None:
    catalogue = pd.Series([1, 2, 3, 4])
    assert coverage(pd.Series([1, 2, 3, 4, 4]), catalogue) == 1.0
    assert coverage(pd.Series([], dtype="int64"), catalogue) == 0.0
    # items 1 and 3 of 4 (9 is not in the catalogue and does not count): 2 / 4
    assert coverage(pd.Series([1, 3, 3, 9]), catalogue) == 0.5


def test_novelty_is_the_mean_self_information_of_what_was_recommended() -> None:
    popularity = pd.Series({1: 7, 2: 3})  # users who interacted with each item, of 7 users
    recs = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 3]})
    # p = (n + 1) / (7 + 1): item 1 8/8 -> 0 bits, item 2 4/8 -> 1 bit, item 3 (nobody) 1/8 -> 3
    # bits; mean over the three rows (0 + 1 + 3) / 3
    assert novelty(recs, popularity, users=7) == pytest.approx(4 / 3)
    everyone = pd.DataFrame({"user_id": [1], "item_id": [1]})
    assert novelty(everyone, popularity, users=7) == 0.0  # an item everyone had tells nothing


def test_diversity_is_one_minus_the_mean_pairwise_cosine_of_a_list() -> None:
    vectors = pd.DataFrame(
        [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]], index=pd.Index([1, 2, 3, 4])
    )
    same = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 4]})
    assert diversity(same, vectors) == pytest.approx(0.0)  # parallel vectors: cosine 1
    orthogonal = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2]})
    assert diversity(orthogonal, vectors) == pytest.approx(1.0)  # cosine 0
    # user 1 lists items 1, 2, 3: cosines (1,2) 0, (1,3) 1/sqrt2, (2,3) 1/sqrt2, mean sqrt2/3,
    # diversity 1 - sqrt2/3 = 0.5286; user 2 lists 1 and 4: 0. Mean over both lists 0.2643.
    # Item 9 has no embedding and is left out; user 3's one embedded item makes no pair.
    recs = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 2, 3], "item_id": [1, 2, 3, 1, 4, 9, 2]})
    assert diversity(recs, vectors) == pytest.approx((1 - math.sqrt(2) / 3) / 2)


def events(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows,
        columns=["user_id", "item_id", "event_type", "ts", "read_fraction", "rec_source",
                 "rec_variant", "surface"],
    )  # fmt: skip
    return frame.assign(ts=pd.to_datetime(frame["ts"], utc=True))


def test_reads_count_for_the_source_of_the_last_click_before_them() -> None:
    frame = events([
        (1, 10, "impression", "2026-11-19 08:00", None, "als", "a", "home"),
        (1, 10, "click", "2026-11-19 08:01", None, "als", "a", "home"),
        (1, 10, "read", "2026-11-19 08:05", 0.95, None, None, "reader"),
        (1, 10, "read", "2026-11-19 09:00", 1.0, None, None, "reader"),  # same issue: once
        (2, 10, "impression", "2026-11-19 08:00", None, "als", "a", "home"),
        (2, 11, "impression", "2026-11-19 08:00", None, "trending", "a", "home"),
        (2, 11, "click", "2026-11-19 08:02", None, "trending", "a", "home"),
        (2, 11, "read", "2026-11-19 08:03", 0.5, None, None, "reader"),  # not far enough
        (2, 12, "read", "2026-11-19 08:04", 1.0, None, None, "reader"),  # never clicked
        (3, 13, "read", "2026-11-19 07:00", 1.0, None, None, "reader"),  # read before the click
        (3, 13, "impression", "2026-11-19 08:00", None, "als", "b", "home"),
        (3, 13, "click", "2026-11-19 08:01", None, "als", "b", "home"),
    ])  # fmt: skip
    found = reads_per_user(frame, 0.9).set_index(["source", "variant"])
    # als/a: users 1 and 2 shown, user 1's one read -> 0.5; trending/a and als/b: nothing read
    assert found.loc[("als", "a"), ["users", "reads", "reads_per_user"]].tolist() == [2, 1, 0.5]
    assert found.loc[("trending", "a"), "reads"] == 0
    assert found.loc[("als", "b"), "reads"] == 0

    counts = context_counts(frame).set_index(["source", "variant"])
    assert counts.loc[("als", "a")].tolist() == [2, 1]  # two impressions, one click
    assert counts.loc[("trending", "a")].tolist() == [1, 1]

    daily = activity(frame).set_index(["period", "event_type", "surface"])
    assert daily.loc[(pd.Timestamp("2026-11-19", tz="UTC"), "read", "reader")].tolist() == [5, 3]


def test_drift_flags_a_shifted_feature_and_not_a_resampled_one() -> None:
    rng = np.random.default_rng(3)
    before = pd.DataFrame({"stable": rng.normal(0, 1, 2000), "shifted": rng.normal(0, 1, 2000)})
    now = pd.DataFrame({"stable": rng.normal(0, 1, 2000), "shifted": rng.normal(1, 1, 2000)})
    found = feature_drift(now, before).set_index("feature")
    assert bool(found.loc["shifted", "drifted"]) and found.loc["shifted", "ks_statistic"] > 0.3
    assert not bool(found.loc["stable", "drifted"])


def test_the_user_sample_is_seeded_and_bounded() -> None:
    users = np.arange(1000)
    assert np.array_equal(sample_users(users, 10), sample_users(users, 10))
    assert len(sample_users(users, 10)) == 10
    assert np.array_equal(sample_users(users[:5], 10), users[:5])


# -- the page of two real nights ------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_nights(
    world_template: Path,
    redis_server: str,
    world_end: datetime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    """The world's next-to-last night through the library steps, its last through the DAG."""
    import os
    import subprocess
    import sys

    from airflow.dag_processing.dagbag import BundleDagBag

    from features.embeddings import build_embeddings
    from features.interactions import build_interactions
    from inbo.errors import ValidationFailed
    from inbo.settings import get_settings
    from pipelines.ingest import ingest_exclusive
    from pipelines.promotion import gate_batch
    from pipelines.publish.steps import publish_table
    from pipelines.score import score_users
    from pipelines.train import fit_baselines, train_als, train_reranker
    from pipelines.validate import accept_batch, validate_exclusive

    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=os.environ)
    var_dir = tmp_path_factory.mktemp("dashboard") / "var"
    shutil.copytree(world_template, var_dir)
    first = world_end - timedelta(days=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INBO_VAR_DIR", str(var_dir))
        patch.setenv("INBO_REDIS_URL", redis_server)
        patch.setenv("INBO_REDIS_PREFIX", "dashboard")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        ingest_exclusive(first)
        try:
            validate_exclusive(first)
        except ValidationFailed:  # a first night sees issues of its last day still half-written
            accept_batch(batch_key(first), by="test_dashboard")
        for step in (build_interactions, build_embeddings, fit_baselines, train_als,
                     train_reranker, gate_batch, score_users, publish_table):  # fmt: skip
            step(first)
        dags = REPO_ROOT / "dags"
        dag = BundleDagBag(dag_folder=str(dags), bundle_path=dags).get_dag("inbo_nightly")
        run = dag.test(logical_date=world_end)
        assert str(run.state) == "success"
        yield get_settings()
    get_settings.cache_clear()


@pytest.mark.e2e
def test_the_nightly_writes_a_page_whose_every_chart_renders_offline(
    two_nights: Settings, world_end: datetime
) -> None:
    batch = batch_key(world_end)
    page_path = two_nights.reports_dir / "dashboard" / f"{batch}.html"
    assert page_path.exists(), "the DAG's write_dashboard task wrote the batch's page"
    written = page_path.read_text()
    assert (page_path.parent / "index.html").read_text() == written
    assert written.count("* plotly.js v") == 1, "plotly.js is inlined once for the whole page"
    markup = re.sub(r"<script[^>]*>.*?</script>", "", written, flags=re.S)  # scripts' own text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup), "nothing remote"
    assert "<script src" not in written and "<link" not in written
    charts = int(re.search(r'data-charts="(\d+)"', written).group(1))
    again = build_dashboard(world_end, two_nights)  # the same batch gives the same page
    assert again.failed == [] and again.figures == charts >= 14

    opened = open_offline(page_path, screenshot=page_path.parent / "dashboard.png")
    rendered, text = opened.charts, opened.text
    assert opened.errors == [] and opened.remote == []
    assert len(rendered) == charts
    assert [c["title"] for c in rendered if not (c["svg"] and c["traces"] > 0)] == []
    assert "segments are not computed yet" in text
    assert "No previous night" not in text and "features drifted" in text
    assert (page_path.parent / "dashboard.png").stat().st_size > 50_000


@pytest.mark.e2e
def test_model_history_has_both_nights_with_the_gates_decisions(
    two_nights: Settings, world_end: datetime
) -> None:
    nights = [batch_key(world_end - timedelta(days=1)), batch_key(world_end)]
    history = model_history(two_nights, nights)
    for model in ("als", "reranker"):
        rows = history[history["model"] == model]
        assert rows["batch"].tolist() == nights
        assert rows["decision"].iloc[0] == "promoted"  # the first model is always promoted
        assert set(rows["decision"]) <= {"promoted", "kept"}
        assert rows["ndcg_at_10"].notna().all() and rows["champion_ndcg_at_10"].iloc[1] > 0


@pytest.mark.e2e
def test_a_segments_table_adds_the_segment_panels(
    two_nights: Settings, world_end: datetime, tmp_path: Path
) -> None:
    lake_dir = tmp_path / "lake"
    shutil.copytree(two_nights.lake, lake_dir)
    lake = Lake(str(lake_dir))
    batch = batch_key(world_end)
    without = engagement_section(lake, two_nights, batch)
    users = lake.read_batch(tables.RECS_USERS, batch, columns=["user_id"])["user_id"]
    lake.write_batch(
        pd.DataFrame({"user_id": users, "segment": np.where(users % 2 == 0, "even", "odd")}),
        SEGMENTS,
        batch,
    )
    with_segments = engagement_section(lake, two_nights, batch)
    assert len(with_segments.figures) == len(without.figures) + 2
    assert not any("not computed" in note for note in with_segments.notes)
    shown = {str(x) for trace in with_segments.figures[-2].data for x in trace.x}
    assert shown == {"even", "odd"}


def test_the_dashboard_task_is_a_teardown_after_the_switch() -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    dags = REPO_ROOT / "dags"
    dag = BundleDagBag(dag_folder=str(dags), bundle_path=dags).dags["inbo_nightly"]
    task = dag.get_task("write_dashboard")
    assert task.is_teardown and not task.on_failure_fail_dagrun  # its failure leaves the run be
    assert task.upstream_task_ids == {"activate_version"}
    assert task.downstream_task_ids == set()


@pytest.mark.e2e
def test_inbo_dashboard_writes_the_newest_night_and_says_when_there_is_none(
    two_nights: Settings, world_end: datetime, tmp_path: Path
) -> None:
    import json

    from tests.test_cli import one_error_line, run

    shown = run("dashboard", "--json")
    assert shown.returncode == 0, shown.stderr
    written = json.loads(shown.stdout)
    assert written["batch"] == batch_key(world_end) and written["failed"] == []
    page = Path(written["path"]).read_text()
    assert f'data-charts="{written["figures"]}"' in page
    plain = run("dashboard", "--date", f"{world_end - timedelta(days=1):%Y-%m-%d}")
    assert plain.returncode == 0 and plain.stdout.strip().endswith(
        f"{batch_key(world_end - timedelta(days=1))}.html"
    )
    assert Path(written["index"]).read_text() == page  # an older night leaves index.html alone

    nothing = run("dashboard", INBO_VAR_DIR=str(tmp_path / "empty"))
    assert nothing.returncode == 1 and "no nightly batch" in one_error_line(nothing)
