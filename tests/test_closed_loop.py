"""The closed loop and the experiment readout on it: two simulated days against real Redis.

The world's feed sessions show the lists the nightly published, read through the Redis contract;
between the days the nightly's steps run in this process (`inbo play` runs the same steps as the
DAG through Airflow, `test_play_command_runs_the_dags_through_airflow`). An experiment serving
popularity against the champion runs from the first nightly, and its readout is checked against
the lake table and the HTML report.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sqlalchemy import create_engine

from inbo.settings import REPO_ROOT, Settings, get_settings
from pipelines.experiments.lifecycle import ExperimentState
from tests.browser import open_offline

END = datetime(2026, 11, 20, tzinfo=UTC)
NAME = "loop-ab"


def experiments_file(folder: Path, mde: float = 3.0) -> Path:
    """One experiment, popularity (control) against the champion; an MDE a 400-user world can
    power (its detectable lift is about 40%)."""
    path = folder / "experiments.yml"
    experiment = {
        "name": NAME,
        "salt": "loop-salt",
        "control": "popularity",
        "variants": [
            {"name": "popularity", "weight": 1, "policy": {"kind": "popularity"}},
            {"name": "ranker", "weight": 1, "policy": {"kind": "champion"}},
        ],
        "minimum_detectable_effect": mde,
        "planned_days": 2,
    }
    path.write_text(yaml.safe_dump({"experiments": [experiment]}))
    return path


@dataclass(frozen=True)
class Played:
    settings: Settings
    loop: object
    versions: list[str]


@pytest.fixture(scope="module")
def played(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    from inbo.services import redis_client
    from pipelines.demo.closed_loop import ClosedLoop, TableFeed
    from pipelines.experiments.lifecycle import experiments_config, start_experiment
    from pipelines.experiments.power import power_check
    from pipelines.ingest import ingest_exclusive
    from pipelines.offline.bench_hourly import run_nightly
    from pipelines.validate import validate_exclusive

    folder = tmp_path_factory.mktemp("loop")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INBO_VAR_DIR", str(folder / "var"))
        patch.setenv("INBO_REDIS_URL", redis_server)
        patch.setenv("INBO_REDIS_PREFIX", "loop")
        patch.setenv("INBO_EXPERIMENTS_FILE", str(experiments_file(folder)))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        settings = get_settings()
        loop = ClosedLoop.begin(
            settings.app_db, users=400, items=150, history_days=4, days=2, seed=5, end=END,
            truth_dir=settings.var_dir / "simulation",
        )  # fmt: skip
        ingest_exclusive(END, settings)
        validate_exclusive(END, settings)
        config = experiments_config(settings).get(NAME)
        start_experiment(NAME, END, power_check(config, END, settings), settings)
        versions = [run_nightly(settings, END)]
        feed = TableFeed(redis_client(settings), settings.redis_prefix)
        for day in range(2):
            loop.play_day(feed)
            versions.append(run_nightly(settings, END + timedelta(days=day + 1)))
        yield Played(settings, loop, versions)
    get_settings.cache_clear()


def app_rows(settings: Settings, sql: str) -> pd.DataFrame:
    engine = create_engine(settings.app_db)
    try:
        return pd.read_sql(sql, engine)
    finally:
        engine.dispose()


def test_feed_impressions_show_the_live_table_and_log_its_version_and_variant(
    played: Played,
) -> None:
    from inbo import tables
    from inbo.lake import Lake, batch_key
    from inbo.services import redis_client
    from pipelines.experiments.assignment import Allocation
    from pipelines.publish.contract import Keys

    rows = app_rows(
        played.settings,
        "SELECT user_id, issue_id, session_id, position, rec_context, occurred_at "
        "FROM experience_interactions WHERE kind = 'impression' AND surface = 'feed' "
        f"AND occurred_at >= '{END:%Y-%m-%d}'",
    )
    context = pd.DataFrame([json.loads(text) for text in rows["rec_context"]], index=rows.index)
    # a session belongs to the day it started in (its last slots may fall past midnight)
    started = pd.to_datetime(rows.groupby("session_id")["occurred_at"].transform("min"))
    day = (started.dt.day - END.day).to_numpy()
    # each day shows the version the previous midnight's nightly made live
    expected = np.array(played.versions[:2], dtype=object)[day]
    assert (context["table_version"].to_numpy() == expected).all()

    # users with a row carry the hash's variant; the others were shown the fallback, unlabelled
    client = redis_client(played.settings)
    keys = Keys(played.settings.redis_prefix)
    version = played.versions[0]
    first = rows[day == 0]
    has_row = np.array([client.exists(keys.user(version, int(u))) > 0 for u in first["user_id"]])
    plan = json.loads(Lake(played.settings.lake).read_json(tables.SCORE_PLANS, batch_key(END)))
    labels, _ = Allocation.from_json(plan["experiments"]).assign(first["user_id"].to_numpy())
    variant = context.loc[first.index, "variant"].to_numpy()
    assert (variant[has_row] == np.asarray(labels, dtype=object)[has_row]).all()
    assert pd.isna(variant[~has_row]).all()
    assert set(variant[has_row]) == {f"{NAME}/popularity", f"{NAME}/ranker"}

    # a session's slots are the first items of the user's list, in rank order
    with_row = first[has_row]
    sizes = with_row.groupby("session_id").size()
    shown = with_row[with_row["session_id"] == sizes.idxmax()].sort_values("position")
    payload = json.loads(client.get(keys.user(version, int(shown["user_id"].iloc[0]))))
    assert shown["issue_id"].tolist() == payload["items"][: len(shown)]
    assert shown["position"].tolist() == list(range(len(shown)))


def test_the_world_reaches_the_database_as_its_time_comes(played: Played) -> None:
    """Users, issues, unsubscriptions and profile edits of the played days are written when they
    happen; none of the world's later days exist yet."""
    end = END + timedelta(days=2)
    users = app_rows(played.settings, "SELECT created_at, updated_at FROM users")
    issues = app_rows(played.settings, "SELECT published_at FROM newsletter_issues")
    subs = app_rows(played.settings, "SELECT subscribed_at, unsubscribed_at FROM subscriptions")
    naive = pd.Timestamp(end.replace(tzinfo=None))
    for frame, column in ((users, "created_at"), (users, "updated_at"), (issues, "published_at"),
                          (subs, "subscribed_at"), (subs, "unsubscribed_at")):  # fmt: skip
        assert (pd.to_datetime(frame[column]).dropna() < naive).all(), column
    start = pd.Timestamp(END.replace(tzinfo=None))
    assert (pd.to_datetime(users["created_at"]) >= start).any()  # signed up while playing
    assert (pd.to_datetime(issues["published_at"]) >= start).any()
    ended = pd.to_datetime(subs["unsubscribed_at"])
    assert ((ended >= start) & (pd.to_datetime(subs["subscribed_at"]) < start)).any()
    edited = pd.to_datetime(users["updated_at"])
    assert ((edited >= start) & (pd.to_datetime(users["created_at"]) < start)).any()


def test_the_ground_truth_expects_the_clicks_the_users_made(played: Played) -> None:
    """The simulator's expected clicks on the table's slots match the clicks logged on them
    within Poisson noise (4 standard deviations of a sum of Bernoulli draws)."""
    from pipelines.demo.closed_loop import read_truth

    truth = read_truth(played.settings.var_dir / "simulation")
    assert sorted(truth["day"].dt.day.unique()) == [END.day, END.day + 1]
    pending = played.loop.simulation.player.pending  # type: ignore[attr-defined]
    clicks = (
        app_rows(
            played.settings,
            "SELECT COUNT(*) AS n FROM experience_interactions WHERE kind = 'click' "
            f"AND surface = 'feed' AND rec_context IS NOT NULL AND occurred_at >= '{END:%Y-%m-%d}'",
        )["n"].iloc[0]
        + ((pending["kind"] == "click") & (pending["surface"] == "feed")).sum()
    )
    expected = truth["expected_clicks"].sum()
    assert expected > 50
    assert abs(clicks - expected) < 4 * np.sqrt(expected)
    impressions = app_rows(
        played.settings,
        "SELECT COUNT(*) AS n FROM experience_interactions WHERE kind = 'impression' "
        f"AND surface = 'feed' AND occurred_at >= '{END:%Y-%m-%d}'",
    )["n"].iloc[0]
    in_flight = ((pending["kind"] == "impression") & (pending["surface"] == "feed")).sum()
    assert in_flight > 0  # a few phones upload hours late: those rows come after the window
    assert truth["impressions"].sum() == impressions + in_flight


def test_the_readout_goes_to_the_lake_mlflow_and_a_report_naming_each_variant(
    played: Played,
) -> None:
    from pipelines.experiments.analysis import read_results
    from pipelines.experiments.readouts import report_experiment
    from pipelines.experiments.report import p_value
    from pipelines.tracking import read_run

    done = report_experiment(NAME, END + timedelta(days=2), played.settings)
    readout = done.readout
    assert not readout.ratio.mismatch
    assert min(readout.users.values()) > 50
    lake = read_results(NAME, played.settings)
    primary = lake[lake["role"] == "primary"].iloc[0]
    assert primary["metric"] == "ctr" and primary["treatment"] == "ranker"
    page = done.report.read_text()
    for variant in ("popularity", "ranker"):
        assert f"<td>{variant}</td>" in page
    assert f"{primary['rel_effect']:+.2%}" in page
    assert html.escape(p_value(primary["pvalue"])) in page
    assert f"{primary['control_users']:,}" in page
    run = read_run(played.settings, done.mlflow_run)
    assert run.metrics["ctr.ranker.rel_effect"] == pytest.approx(primary["rel_effect"])


def test_the_report_renders_every_chart_in_a_real_browser_offline(played: Played) -> None:
    from pipelines.experiments.readouts import report_experiment

    path = report_experiment(NAME, END + timedelta(days=2), played.settings).report
    opened = open_offline(path)
    charts = opened.charts
    assert opened.errors == [] and opened.remote == []
    # one lift chart for the one treatment, with its two bands and the lift; the exposure chart
    assert [(c["id"], c["svg"], c["traces"]) for c in charts] == [
        ("lift-1", True, 3),
        ("exposure", True, 2),
    ]
    assert "Verdict" in opened.text and "ranker" in opened.text and "popularity" in opened.text


def test_aa_resaltings_of_the_logs_are_significant_about_alpha_of_the_time(
    played: Played,
) -> None:
    """200 A/A splits of the loop's exposed users at alpha 0.05. The bounds are the binomial's
    central 99.9% for 200 splits at 5%: 2 to 21 significant splits."""
    from scipy.stats import binom

    from pipelines.experiments.calibration import aa_calibration

    state, looks = daily_looks(played)
    users = [frame for _, frame in looks]
    experiment = state.experiment()
    calibration = aa_calibration(users, experiment, 200, planned_users=len(users[-1]))
    low, high = binom.ppf([0.0005, 0.9995], 200, 0.05) / 200
    assert (low, high) == (0.01, 0.105)
    assert low <= calibration.fixed_rate <= high
    assert calibration.sequential_rate <= high
    assert calibration.fixed_interval[0] <= calibration.fixed_rate <= calibration.fixed_interval[1]


def test_a_sample_ratio_mismatch_withholds_every_verdict_and_the_report_says_why(
    played: Played,
) -> None:
    from pipelines.experiments.analysis import WITHHELD, read_out_look
    from pipelines.experiments.calibration import without_share
    from pipelines.experiments.report import write_report

    state, looks = daily_looks(played)
    moment, users = looks[-1]
    assert not read_out_look(state, moment, users).ratio.mismatch
    broken = read_out_look(state, moment, without_share(users, "ranker", 0.5, seed=1))
    assert broken.ratio.mismatch and broken.ratio.pvalue < 0.001
    assert broken.verdicts == {"ranker": WITHHELD}
    assert broken.results == []
    page = write_report(broken, [broken], played.settings).read_text()
    assert "Sample ratio mismatch" in page and "verdicts withheld" in page


def daily_looks(played: Played) -> tuple[ExperimentState, list[tuple[datetime, pd.DataFrame]]]:
    from inbo.lake import Lake
    from pipelines.experiments.analysis import exposure_looks, looks_until
    from pipelines.experiments.lifecycle import read_state

    state = read_state(Lake(played.settings.lake), NAME)
    moments = looks_until(state, END + timedelta(days=2), timedelta(days=1))
    return state, exposure_looks(state, moments, played.settings)


@pytest.mark.e2e
def test_play_command_runs_the_dags_through_airflow(settings: Settings, tmp_path: Path) -> None:
    """`inbo play` in a subprocess: history, the experiment started after its power check, a
    played day between two nightlies through Airflow's scheduler, and the readout DAG."""
    from inbo.services import stop_redis

    inbo = str(Path(sys.executable).with_name("inbo"))
    env = {
        **os.environ,
        "INBO_VAR_DIR": str(settings.var_dir),
        "INBO_EXPERIMENTS_FILE": str(experiments_file(tmp_path)),
    }
    env.pop("INBO_REDIS_URL", None)
    out = subprocess.run(
        [inbo, "play", "--days", "1", "--users", "400", "--items", "150", "--history-days", "4",
         "--experiment", NAME, "--date", "2026-11-21"],
        capture_output=True, text=True, env=env, timeout=900, cwd=REPO_ROOT,
    )  # fmt: skip
    # the command started its own embedded Redis under the var dir (this module's fixture may
    # have pointed INBO_REDIS_URL at the session's server, which `settings` then carries)
    stop_redis(Settings(var_dir=settings.var_dir, redis_url=""))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("inbo_nightly succeeded") == 2
    assert out.stdout.count("inbo_experiments succeeded") == 2
    assert f"{NAME} starts at 2026-11-20 00:00 UTC" in out.stdout
    assert "played 2026-11-20" in out.stdout
    from pipelines.demo.closed_loop import read_play_record

    record = read_play_record(settings.var_dir / "simulation")
    assert record is not None and record["seconds"] > 0
    assert {k: record[k] for k in ("days", "users", "history_days", "experiments")} == {
        "days": 1, "users": 400, "history_days": 4, "experiments": [NAME],
    }  # fmt: skip
    reports = list((settings.reports_dir / "experiments" / NAME).glob("*/report.html"))
    assert [p.parent.name for p in reports] == ["20261121T0000Z"]  # day 0 has no exposure yet
