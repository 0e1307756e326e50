"""Logging for the command line: our steps at INFO, the chattiest libraries kept to warnings.

Airflow configures logging itself for tasks; this is only called by the `inbo` CLI and notebooks.
"""

from __future__ import annotations

import logging
import os

NOISY = (
    "great_expectations",
    "mlflow",
    "alembic",
    "urllib3",
    "sqlalchemy",
    "matplotlib",
    "sentence_transformers",
    "httpx",
    "filelock",
    "fsspec",
    "faiss",
)


def quiet_libraries() -> None:
    """Keep third-party libraries to warnings, and their progress bars and telemetry off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(verbose: bool = False) -> None:
    """One concise line per message on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_libraries()
