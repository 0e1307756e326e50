"""The one typed settings object: every knob of the platform, read from `INBO_*` variables or `.env`.

Every field is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inbo.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Platform configuration. Paths default to folders under `var_dir`."""

    model_config = SettingsConfigDict(env_prefix="INBO_", env_file=".env", extra="ignore")

    var_dir: Path = Field(REPO_ROOT / "var", description="Runtime state: lake, databases, logs.")
    lake_url: str = Field("", description="fsspec URL of the lake; default <var_dir>/lake.")
    app_db_url: str = Field("", description="SQLAlchemy URL of the INBO app database.")
    redis_url: str = Field(
        "", description="Redis to publish to; empty starts the embedded server under var/."
    )
    redis_prefix: str = Field("inbo", description="Prefix of every Redis key the platform writes.")
    app_redis_url: str = Field(
        "", description="The app's Redis (its per-item counters); empty: the platform's Redis."
    )
    app_redis_prefix: str = Field("app", description="Prefix of the app's counter keys.")
    reconcile_target: float = Field(
        0.01, ge=0.0, le=1.0, description="Share of items whose app counters may disagree."
    )
    mlflow_tracking_uri: str = Field(
        "", description="MLflow tracking URI; MLFLOW_TRACKING_URI wins, default SQLite under var/."
    )
    airflow_db_url: str = Field(
        "",
        description="Airflow's metadata DB, read by `inbo health`; AIRFLOW__DATABASE__SQL_ALCHEMY_CONN "
        "wins, default SQLite under var/airflow.",
    )
    quarantine_threshold: float = Field(
        0.01, ge=0.0, le=1.0, description="Bad-row share above which a batch fails."
    )
    top_n: int = Field(50, ge=1, le=500, description="Items per user in the published table.")
    fallback_n: int = Field(100, ge=1, description="Items in the fallback list.")
    publish_batch_size: int = Field(
        50,
        ge=1,
        description="Keys per atomic staging call; Redis serves no reader while one runs.",
    )
    publish_parallel: int = Field(
        1,
        ge=1,
        description="Publish writer tasks, each staging every n-th shard (more if Redis has cores).",
    )
    version_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="How long a superseded table version stays for rollback."
    )
    stale_after_seconds: int = Field(
        26 * 3600,
        ge=60,
        description="Age of the newest data in the live table past which `inbo status` says stale.",
    )
    popularity_half_life_days: float = Field(
        7.0, gt=0, description="Half-life of the time decay in popularity scores."
    )
    history_days: int = Field(30, ge=1, description="Days of events the nightly models look at.")
    continue_reading_min: float = Field(
        0.05, ge=0, le=1, description="Read fraction from which an issue counts as started."
    )
    continue_reading_max: float = Field(
        0.9, ge=0, le=1, description="Read fraction from which an issue counts as read."
    )
    continue_reading_days: int = Field(
        14, ge=1, description="How old a started issue may be to be offered again."
    )

    als_factors: int = Field(64, ge=1, description="ALS latent factors.")
    als_regularization: float = Field(20.0, ge=0, description="ALS L2 regularisation.")
    als_alpha: float = Field(2.0, ge=0, description="ALS confidence = 1 + alpha * weight.")
    als_iterations: int = Field(15, ge=1, description="ALS alternating passes.")
    als_weighting: str = Field("none", description="Confidence weighting: none, bm25 or tfidf.")
    candidates_per_source: int = Field(
        100, ge=1, description="Candidates each source proposes per user before reranking."
    )
    score_shards: int = Field(
        1,
        ge=1,
        le=999,
        description="User shards that score and publish in parallel; memory per task ~ 1/shards.",
    )
    reranker_label_days: float = Field(
        2.0,
        gt=0,
        description="Days of impressions the reranker learns from (before the batch end).",
    )
    reranker_max_users: int = Field(
        100_000,
        ge=1,
        description="Users (with a positive label) the reranker learns from, sampled; bounds memory.",
    )
    holdout_days: float = Field(
        2.0, gt=0, description="Days at the end of the batch held out to evaluate and gate models."
    )
    promotion_margin: float = Field(
        0.005,
        ge=0,
        description="How much worse (nDCG@10) a challenger may be and still be promoted.",
    )

    ingest_gap_days: float = Field(
        7.0,
        gt=0,
        description="How long a missing interaction id is re-checked before it counts as rolled back.",
    )

    hourly_schedule: str = Field(
        "0 * * * *", description="Cron schedule (UTC) of the hourly refresh DAG; any period works."
    )
    lock_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="A held lock's lease, renewed by its holder; a dead holder frees it this soon.",
    )
    lock_wait_seconds: float = Field(
        600.0, ge=0, description="How long a step waits for a lock before failing (to be retried)."
    )

    exporter_port: int = Field(
        9150, ge=1, le=65535, description="Port of `inbo exporter` (/metrics, /healthz, /readyz)."
    )
    exporter_refresh_seconds: float = Field(
        30.0, gt=0, description="How often the exporter re-reads the platform's state for /metrics."
    )
    anomaly_poll_seconds: float = Field(
        60.0, gt=0, description="How often the exporter runs anomaly detection on new app events."
    )
    dashboard_days: int = Field(
        14, ge=1, le=90, description="Days (and nights) of history the analytics dashboard shows."
    )
    dashboard_sample_users: int = Field(
        20_000,
        ge=100,
        description="Users sampled (seeded) for the dashboard's per-user numbers on big nights.",
    )
    anomaly_history_days: int = Field(
        14,
        ge=1,
        le=56,
        description="Days of per-minute history the anomaly baseline is built from (held in memory).",
    )
    anomaly_smooth_minutes: int = Field(
        2, ge=0, le=30, description="Neighbouring minutes (each side) the baseline averages over."
    )
    anomaly_window_minutes: int = Field(
        5, ge=1, le=60, description="Longest run of recent minutes an anomaly test sums over."
    )
    anomaly_threshold: float = Field(
        7.0, gt=0, description="Score (-log10 tail probability) from which a series is anomalous."
    )

    alert_webhook_url: str = Field(
        "", description="Webhook (Slack-compatible JSON) Airflow alerts post to; empty: log only."
    )
    nightly_deadline_minutes: float = Field(
        240.0,
        ge=0,
        description="Minutes after it is queued by which a nightly run must finish; 0: no deadline.",
    )
    hourly_deadline_minutes: float = Field(
        45.0,
        ge=0,
        description="Minutes after it is queued by which an hourly run must finish; 0: no deadline.",
    )

    experiments_file: Path = Field(
        REPO_ROOT / "experiments.yml", description="The experiments config (docs/experiments.md)."
    )
    experiment_layer: str = Field(
        "feed-ranking", description="The experiment layer whose variants the tables serve."
    )

    @field_validator("redis_url", "app_redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def als_params(self) -> dict[str, Any]:
        return {
            "factors": self.als_factors,
            "regularization": self.als_regularization,
            "alpha": self.als_alpha,
            "iterations": self.als_iterations,
            "weighting": self.als_weighting,
        }

    @property
    def lake(self) -> str:
        return self.lake_url or str(self.var_dir / "lake")

    @property
    def app_db(self) -> str:
        return self.app_db_url or f"sqlite:///{self.var_dir / 'app' / 'inbo_app.db'}"

    @property
    def mlflow_uri(self) -> str:
        explicit = os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow_tracking_uri
        return explicit or f"sqlite:///{self.var_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def airflow_db(self) -> str:
        explicit = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or self.airflow_db_url
        return explicit or f"sqlite:///{self.var_dir / 'airflow' / 'airflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.var_dir / "mlflow" / "artifacts"

    @property
    def redis_dir(self) -> Path:
        return self.var_dir / "redis"

    @property
    def reports_dir(self) -> Path:
        return self.var_dir / "reports"

    def model_dir(self, batch: str) -> Path:
        """Where a batch's fitted models are saved (and logged to MLflow from)."""
        return self.var_dir / "models" / batch


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, parsed once; a bad value is a `ConfigError`."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"INBO_{field.upper()}: {first['msg']}") from None
