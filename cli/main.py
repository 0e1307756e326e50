"""Entry point of the `inbo` command: every command module registered, errors as one line."""

from __future__ import annotations

import sys

from cli import (  # noqa: F401  (they register commands)
    airflow,
    demo,
    experiments,
    ml,
    monitoring,
    operations,
    pipeline,
    play,
    serving,
)
from cli.app import app
from inbo.errors import ConfigError, InboError


def main() -> None:
    """Platform errors become one line on stderr and a non-zero exit code."""
    try:
        app()
    except InboError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.filename is None:  # not a file-system error: a bug to see in full
            raise
        print(
            f"error: cannot use {exc.filename}: {exc.strerror}; check INBO_VAR_DIR and "
            "INBO_LAKE_URL point at a place this user can write",
            file=sys.stderr,
        )
        sys.exit(ConfigError.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
