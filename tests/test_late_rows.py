"""No row is ever lost at ingest: rows committed late, backdated rows, a batch killed midway,
and two writers committing ids out of order while ingest runs, on SQLite and on a real Postgres.

Each case was lost before the gap set and the sweep (`pipelines.extract`): the watermark was an
exclusive low with no second look, so a row below it was read by no batch.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from test_ingest import B1, B2, KEY2, LAST_ID, at, insert, interaction, progress
from typer.testing import CliRunner

from cli.main import app
from inbo import tables
from inbo.faults import CRASH_AT
from inbo.lake import Lake
from inbo.settings import Settings
from pipelines.app.database import app_engine, create_app_schema
from pipelines.app.sources import AppDbSource, IncrementalTable, Watermark
from pipelines.extract import completeness, read_head
from pipelines.ingest import ingest

B3 = B2 + timedelta(days=1)


def raw_rows(lake: Lake, table: str) -> pd.DataFrame:
    """Every raw row any batch landed of an app table, with the batch that landed it."""
    frames = [
        lake.read_files([path]).assign(_batch=path.split("batch=")[1].split("/")[0])
        for path in lake.files(tables.raw(table).path, "batch=*/part.parquet")
    ]
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def taken_ids(lake: Lake) -> pd.Series:
    rows = raw_rows(lake, "experience_interactions")
    return rows["id"].astype(int) if not rows.empty else pd.Series(dtype=int)


def app_ids(url: str) -> set[int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        ids = {int(row[0]) for row in conn.execute(text("SELECT id FROM experience_interactions"))}
    engine.dispose()
    return ids


# --- the three kinds of late rows, on SQLite ---


def test_an_id_committed_after_a_larger_one_was_read_is_read_by_the_next_batch(
    world: Settings,
) -> None:
    lake = Lake(world.lake)
    insert(world, "experience_interactions", interaction(id=LAST_ID + 2, session_id="early"))
    first = ingest(B1, world)
    assert read_head(lake, f"{tables.WATERMARKS}/appdb").open_gaps == [[LAST_ID + 1, LAST_ID + 1]]

    # id LAST_ID + 1 was handed out first and committed after the batch ran
    insert(world, "experience_interactions", interaction(id=LAST_ID + 1, session_id="late"))
    ingest(B2, world)
    ingest(B2, world)  # a re-run takes nothing twice
    ingest(B3, world)

    ids = taken_ids(lake)
    assert ids.is_unique
    assert {LAST_ID + 1, LAST_ID + 2} <= set(ids)
    assert set(ids) == app_ids(world.app_db)
    assert first.completeness["experience_interactions"]["missing_rows"] == 0
    assert read_head(lake, f"{tables.WATERMARKS}/appdb").open_gaps == []


def test_progress_committed_after_its_time_was_passed_is_read_by_the_next_batch(
    world: Settings,
) -> None:
    lake = Lake(world.lake)
    insert(world, "reading_progress", progress(world, updated_at=at("2026-11-19 23:00:00")))
    first = ingest(B1, world)
    assert first.watermarks["reading_progress"]["high"] >= "2026-11-19T23:00:00"

    late = progress(world, updated_at=at("2026-11-19 22:00:00"), session_id="late")
    insert(world, "reading_progress", late)
    ingest(B2, world)
    ingest(B3, world)

    rows = raw_rows(lake, "reading_progress")
    assert rows.loc[rows["session_id"] == "late", "_batch"].tolist() == [KEY2]
    assert not rows.duplicated(["user_id", "issue_id", "updated_at"]).any()


def test_a_backdated_progress_row_is_read_and_then_converted_or_quarantined(
    world: Settings,
) -> None:
    lake = Lake(world.lake)
    ingest(B1, world)
    backdated = progress(
        world,
        started_at=at("1970-01-01 00:00:00"),
        updated_at=at("1970-01-01 00:00:01"),
        session_id="backdated",
    )
    insert(world, "reading_progress", backdated)
    second = ingest(B2, world)
    ingest(B3, world)

    rows = raw_rows(lake, "reading_progress")
    assert rows.loc[rows["session_id"] == "backdated", "_batch"].tolist() == [KEY2]
    progress_rows = second.extracted["reading_progress"]
    quarantined = second.quarantined.get("reading_progress", 0)
    assert second.converted["reading_progress"] + quarantined == progress_rows


def test_a_progress_row_updated_in_place_to_an_earlier_time_is_taken_again(
    world: Settings,
) -> None:
    """The ledger compares versions, not times: a clock set back still changes the row."""
    lake = Lake(world.lake)
    row = progress(world, updated_at=at("2026-11-19 20:00:00"), session_id="first")
    insert(world, "reading_progress", row)
    ingest(B1, world)
    engine = create_engine(world.app_db)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE reading_progress SET progress = 0.9, session_id = 'moved back', "
                "updated_at = :then WHERE user_id = :user AND issue_id = :issue"
            ),
            {"then": at("2026-11-19 19:00:00"), "user": row["user_id"], "issue": row["issue_id"]},
        )
    engine.dispose()
    ingest(B2, world)
    ingest(B3, world)

    rows = raw_rows(lake, "reading_progress")
    assert rows.loc[rows["session_id"] == "moved back", "_batch"].tolist() == [KEY2]


# --- completeness: measured, reported, shown ---


class CommitsDuringTheRead(AppDbSource):
    """The app database, with a writer that commits a lower id while the batch reads."""

    def __init__(self, url: str, settings: Settings, row: dict[str, Any]) -> None:
        super().__init__(url)
        self.settings, self.row = settings, row

    def read_increment(
        self, table: IncrementalTable, low: Watermark | None, high: Watermark
    ) -> pd.DataFrame:
        frame = super().read_increment(table, low, high)
        if table.name == "experience_interactions":
            insert(self.settings, table.name, self.row)
        return frame


def test_a_row_committed_while_the_batch_runs_is_reported_missing_with_its_id(
    world: Settings,
) -> None:
    lake = Lake(world.lake)
    insert(world, "experience_interactions", interaction(id=LAST_ID + 2))
    ingest(B1, world)
    insert(world, "experience_interactions", interaction(id=LAST_ID + 4))
    during = CommitsDuringTheRead(world.app_db, world, interaction(id=LAST_ID + 3))

    report = ingest(B2, world, during)

    found = report.completeness["experience_interactions"]
    assert found["missing_rows"] == 1
    assert found["missing"] == [str(LAST_ID + 3)]
    assert found["app_rows"] == found["extracted_rows"] + 1
    shown = CliRunner().invoke(app, ["status"], env={"INBO_VAR_DIR": str(world.var_dir)})
    assert f"1 missing: {LAST_ID + 3}" in " ".join(shown.output.split()), shown.output

    ingest(B3, world)
    assert set(taken_ids(lake)) == app_ids(world.app_db)
    head = read_head(lake, f"{tables.WATERMARKS}/appdb")
    assert (
        completeness(lake, AppDbSource(world.app_db), {}, KEY2)[
            "experience_interactions"
        ].missing_rows
        == 0
    )
    assert head.open_gaps == [
        [LAST_ID + 1, LAST_ID + 1]
    ]  # never committed: re-read until the gap expires


def test_a_gap_that_never_commits_expires_after_the_gap_days(world: Settings) -> None:
    insert(world, "experience_interactions", interaction(id=LAST_ID + 2))
    ingest(B1, world)
    short = world.model_copy(update={"ingest_gap_days": 1.5})
    lake = Lake(world.lake)

    ingest(B2, short)  # one day later: still re-read
    assert read_head(lake, f"{tables.WATERMARKS}/appdb").open_gaps == [[LAST_ID + 1, LAST_ID + 1]]
    ingest(B3, short)  # two days later: a rolled-back insert
    assert read_head(lake, f"{tables.WATERMARKS}/appdb").open_gaps == []


# --- a batch killed midway ---


def run_killed(settings: Settings, point: str, end: datetime) -> None:
    code = f"""
        from datetime import datetime
        from inbo.settings import Settings
        from pipelines.ingest import ingest
        ingest(datetime.fromisoformat({end.isoformat()!r}), Settings(var_dir={str(settings.var_dir)!r}))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, CRASH_AT: point},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, f"did not die at {point}: {result.stderr[-2000:]}"


@pytest.mark.parametrize("point", ["ingest.planned", "ingest.landed"])
@pytest.mark.parametrize("retry_first", [True, False], ids=["retry-first", "next-batch-first"])
def test_a_batch_killed_midway_loses_and_doubles_nothing(
    world: Settings, point: str, retry_first: bool
) -> None:
    insert(world, "experience_interactions", interaction(id=LAST_ID + 2))
    insert(world, "reading_progress", progress(world, updated_at=at("2026-11-19 23:00:00")))
    run_killed(world, point, B1)
    insert(world, "experience_interactions", interaction(id=LAST_ID + 1, session_id="late"))
    insert(world, "reading_progress", progress(world, updated_at=at("2026-11-19 22:00:00")))

    for end in [B1, B2] if retry_first else [B2, B1]:
        ingest(end, world)
    ingest(B3, world)

    lake = Lake(world.lake)
    ids = taken_ids(lake)
    assert ids.is_unique
    assert set(ids) == app_ids(world.app_db)
    versions = raw_rows(lake, "reading_progress")[["user_id", "issue_id", "updated_at"]]
    assert not versions.duplicated().any()
    engine = create_engine(world.app_db)
    with engine.connect() as conn:
        in_app = conn.execute(text("SELECT COUNT(*) FROM reading_progress")).scalar_one()
    engine.dispose()
    assert len(versions) == in_app
    assert read_head(lake, f"{tables.WATERMARKS}/appdb").pending is None


# --- on a real Postgres server, with concurrent writers ---


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Postgres server of the `pgserver` wheel (no network), or the one INBO_TEST_POSTGRES_URL
    names; skipped with the reason only where neither can start."""
    given = os.environ.get("INBO_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    try:
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    except Exception as exc:  # any failure to start is a reason to skip, and is shown
        pytest.skip(f"no Postgres server could start here: {exc}")
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
    yield uri.replace("postgresql://", "postgresql+psycopg://", 1)
    server.cleanup()
    # its exit hook logs once more, after pytest has closed the streams: that line is noise
    logging.getLogger("pgserver").disabled = True


@pytest.fixture
def postgres_app(postgres_server: str, tmp_path: Path) -> Settings:
    """A fresh app database on the Postgres server, holding the app's empty tables."""
    name = f"app_{tmp_path.name.lower().replace('-', '_')[-40:]}_{random.randrange(10**6)}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = postgres_server.replace("/postgres?", f"/{name}?", 1)
    engine = app_engine(url)
    create_app_schema(engine)
    engine.dispose()
    return Settings(var_dir=tmp_path / "var", app_db_url=url)


def pg_interaction(recorded_at: datetime, **overrides: Any) -> dict[str, Any]:
    return (
        interaction(occurred_at=recorded_at, recorded_at=recorded_at, session_id="pg") | overrides
    )


INSERT = text(
    "INSERT INTO experience_interactions (user_id, issue_id, kind, occurred_at, recorded_at, "
    "session_id, dwell_ms, position, surface, device, country, rec_context) VALUES (:user_id, "
    ":issue_id, :kind, :occurred_at, :recorded_at, :session_id, :dwell_ms, :position, :surface, "
    ":device, :country, :rec_context) RETURNING id"
)


def test_postgres_ids_committed_out_of_order_are_each_read_once(postgres_app: Settings) -> None:
    url, lake = postgres_app.app_db, Lake(postgres_app.lake)
    moment = datetime(2026, 11, 19, 12)
    engine = create_engine(url)
    slow = engine.connect()
    slow_tx = slow.begin()
    held = slow.execute(INSERT, pg_interaction(moment, session_id="slow")).scalar_one()
    with engine.begin() as fast:
        quick = fast.execute(INSERT, pg_interaction(moment, session_id="quick")).scalar_one()
    assert held < quick  # the smaller id is still uncommitted

    ingest(B1, postgres_app)
    assert set(taken_ids(lake)) == {quick}
    slow_tx.commit()
    slow.close()
    with engine.begin() as conn:  # and progress committed after its time was passed
        conn.execute(
            text(
                "INSERT INTO reading_progress VALUES (1, 1, 0.5, 30, :t, :t, 'pg', 'web'), "
                "(1, 2, 0.5, 30, :t, :late, 'pg', 'web')"
            ),
            {"t": moment, "late": moment - timedelta(hours=1)},
        )
    ingest(B2, postgres_app)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO reading_progress VALUES (1, 3, 0.5, 30, :t, :t, 'pg', 'web')"),
            {"t": moment - timedelta(hours=2)},
        )
    report = ingest(B3, postgres_app)
    engine.dispose()

    ids = taken_ids(lake)
    assert ids.is_unique and set(ids) == {held, quick}
    keys = raw_rows(lake, "reading_progress")[["user_id", "issue_id"]].astype(int)
    assert sorted(map(tuple, keys.to_numpy().tolist())) == [(1, 1), (1, 2), (1, 3)]
    assert report.completeness["experience_interactions"]["missing_rows"] == 0
    assert report.completeness["reading_progress"]["missing_rows"] == 0


def test_postgres_two_concurrent_writers_while_ingest_runs(postgres_app: Settings) -> None:
    """Two writers hold transactions open for random times while batches run one after another:
    every committed row is extracted by exactly one batch."""
    url, lake = postgres_app.app_db, Lake(postgres_app.lake)
    moment = datetime(2026, 11, 19, 12)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        engine = create_engine(url)
        try:
            while not stop.is_set():
                with engine.begin() as conn:
                    for _ in range(rng.randint(1, 5)):
                        conn.execute(INSERT, pg_interaction(moment, session_id=f"w{seed}"))
                    time.sleep(rng.uniform(0, 0.05))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            engine.dispose()

    writers = [threading.Thread(target=write, args=(seed,)) for seed in (1, 2)]
    for writer in writers:
        writer.start()
    ends = [B1 + timedelta(minutes=minute) for minute in range(0, 8)]
    try:
        for end in ends[:-1]:
            ingest(end, postgres_app)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    ingest(ends[-1], postgres_app)

    assert errors == []
    ids = taken_ids(lake)
    assert len(ids) > 50  # the writers really raced the batches
    assert ids.is_unique
    assert set(ids) == app_ids(url)
    batches = raw_rows(lake, "experience_interactions")["_batch"].nunique()
    assert batches >= 3  # rows spread over several batches, not one final sweep
