"""
### inbo_nightly

Retrains the models and rebuilds every user's recommendation table from the app data, nightly.

`ingest` (app DB rows since the watermark, raw checks, canonical conversion) -> `validate` (Great
Expectations suites, quarantine, threshold) -> `build_interactions` (weighted user-item table,
continue reading) -> `build_embeddings` (MiniLM vectors of new or changed issues) ->
`fit_baselines` (popularity, continue reading, content + "more like this") and `train_als` ->
`train_reranker` (LightGBM LambdaRank on the last days' impressions) -> `evaluate_holdout` (every
configuration, challenger and champion, on the same held-out window) -> `register_and_gate`
(MLflow registry: `challenger`, and `champion` unless worse by the margin) -> `prepare_scoring`
(user list, fallback list, item features, champion versions pinned) -> `score_shard` x
`INBO_SCORE_SHARDS` (champion models, top-N, a reason on every item; one mapped task per user
shard) -> `begin_publish` (reserve a Redis table version) -> `publish_shards` x
`INBO_PUBLISH_PARALLEL` (Redis writers; each stages every n-th shard's users) -> `verify_version`
-> `activate_version` (atomic pointer switch, only once every shard succeeded; the previous
version stays for `inbo rollback`) -> `collect_garbage` (deletes versions past the rollback window
and what crashed runs left, through each version's key index), and beside it `write_dashboard`
(the analytics dashboard, `var/reports/dashboard/<batch>.html`; its path is in the task log).

`write_dashboard` is a teardown: it runs once everything before it is done, even on a night that
failed, and its own failure does not fail the run, so a broken chart never marks a published
table failed.

Shards are dynamically mapped tasks (`.partial().expand()`): the same DAG for 1 shard or 100, on any
executor. A retried shard or writer task rewrites its own lake file and Redis keys, nothing else.

Each task calls one library function with the end of the run's batch (`common.batch_end`); big data moves through the
lake, XCom carries only small summaries and MLflow run ids. Re-running a date gives the same tables.
Each task's function has the task's name, in the module the task imports it from.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from common import (
    INTERACTIONS,
    RECS,
    REDIS_TABLE,
    RETRY_TRANSIENT_ONLY,
    USER_EVENTS,
    batch_end,
    run_deadline,
    run_failed,
    task_failed,
)
from inbo.settings import get_settings

log = logging.getLogger(__name__)

WRITERS = get_settings().publish_parallel
"""Publish tasks, each staging every WRITERS-th score shard: Redis writers at once. Passed to the
tasks with `.partial`, so a worker whose environment says otherwise still splits the same way."""


@dag(
    dag_id="inbo_nightly",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["inbo", "nightly", "recommendations"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_policy": RETRY_TRANSIENT_ONLY,
        "on_failure_callback": task_failed,
    },
    on_failure_callback=run_failed,
    deadline=run_deadline(get_settings().nightly_deadline_minutes),
)
def inbo_nightly() -> None:
    @task
    def ingest() -> dict[str, object]:
        from pipelines.ingest import ingest_exclusive

        report = ingest_exclusive(batch_end())
        return {
            "batch": report.batch,
            "extracted": report.extracted,
            "quarantined": report.quarantined,
        }

    @task(outlets=[USER_EVENTS])
    def validate(_: dict[str, object]) -> dict[str, object]:
        from pipelines.validate import validate_exclusive

        report = validate_exclusive(batch_end())
        return {
            "passed": report.passed,
            "quarantined": report.quarantined,
            "data_docs": report.data_docs,
        }

    @task(outlets=[INTERACTIONS])
    def build_interactions(_: dict[str, object]) -> int:
        from features.interactions import build_interactions

        return build_interactions(batch_end()).pairs

    @task
    def build_embeddings(_: int) -> int:
        from features.embeddings import build_embeddings

        return build_embeddings(batch_end()).encoded

    @task
    def fit_baselines(_: int) -> str:
        from pipelines.train import fit_baselines

        return fit_baselines(batch_end()).run_id

    @task
    def train_als(_: int) -> str:
        from pipelines.train import train_als

        return train_als(batch_end()).run_id

    @task
    def train_reranker(_: str, __: str) -> str:
        from pipelines.train import train_reranker

        return train_reranker(batch_end()).run_id

    @task
    def evaluate_holdout(_: str) -> dict[str, float]:
        from pipelines.promotion import evaluate_holdout

        return evaluate_holdout(batch_end()).scores

    @task
    def register_and_gate(
        scores: dict[str, float],
        als_run: str,
        reranker_run: str,
    ) -> dict[str, object]:
        from pipelines.promotion import register_and_gate

        decisions = register_and_gate(batch_end(), als_run, reranker_run, scores)
        return {kind: decision.promoted for kind, decision in decisions.items()}

    @task
    def prepare_scoring(_: dict[str, object]) -> list[int]:
        """The shards to map over: 0 .. INBO_SCORE_SHARDS - 1, fixed in the batch's plan."""
        from pipelines.score import prepare_scoring

        return list(range(prepare_scoring(batch_end()).shards))

    @task(outlets=[RECS])
    def score_shard(shard: int, all_shards: list[int]) -> int:
        from pipelines.score import score_shard

        return score_shard(batch_end(), shard, len(all_shards)).users

    @task
    def begin_publish(_: list[int], all_shards: list[int]) -> str:
        from pipelines.publish.steps import begin_publish

        return begin_publish(batch_end(), len(all_shards))

    @task
    def publish_shards(
        writer: int,
        writers: int,
        version: str,
        all_shards: list[int],
    ) -> int:
        from pipelines.publish.steps import publish_shards

        reports = publish_shards(batch_end(), version, writer, writers, len(all_shards))
        return sum(report.users for report in reports)

    @task
    def verify_version(version: str, _: list[int]) -> str:
        from pipelines.publish.steps import verify_version

        return verify_version(batch_end(), version)

    @task(outlets=[REDIS_TABLE])
    def activate_version(version: str) -> str:
        from pipelines.publish.steps import activate_version

        activate_version(version)
        return version

    @task
    def collect_garbage(_: str) -> list[str]:
        from pipelines.publish.steps import collect_garbage

        return collect_garbage()

    @task(retries=1)
    def write_dashboard() -> str:
        from pipelines.monitoring.dashboard import write_dashboard

        path = write_dashboard(batch_end())
        log.info("analytics dashboard: %s", path)
        return str(path)

    pairs = build_interactions(validate(ingest()))
    vectors = build_embeddings(pairs)
    baselines = fit_baselines(vectors)
    als_run = train_als(pairs)
    reranker_run = train_reranker(baselines, als_run)
    decisions = register_and_gate(evaluate_holdout(reranker_run), als_run, reranker_run)
    shards = prepare_scoring(decisions)
    scored = score_shard.partial(all_shards=shards).expand(shard=shards)
    version = begin_publish(scored, shards)
    published = publish_shards.partial(version=version, all_shards=shards, writers=WRITERS).expand(
        writer=list(range(WRITERS))
    )
    activated = activate_version(verify_version(version, published))
    collect_garbage(activated)
    activated >> write_dashboard().as_teardown()


inbo_nightly()
