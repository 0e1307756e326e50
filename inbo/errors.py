"""Every exception the platform raises on purpose. The CLI prints these as one line, no traceback."""

from __future__ import annotations


class InboError(Exception):
    """Base of all platform errors; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(InboError):
    """A setting is missing or malformed."""

    exit_code = 2


class ServiceUnavailable(InboError):
    """A backing service (Redis, app database, MLflow) cannot be reached."""

    exit_code = 3


class LockBusy(ServiceUnavailable):
    """Another run holds a lock this step needs (e.g. nightly is switching the live table).

    A `ServiceUnavailable` so the DAGs' retry policy tries again later.
    """


class PublishConflict(ServiceUnavailable):
    """The live table changed while a step was preparing to write into it; a retry starts over."""


class SourceError(InboError):
    """A source table or file is missing or does not have the expected shape."""


class DataNotFound(InboError):
    """A lake partition or table that a step needs has not been written yet."""


class ValidationFailed(InboError):
    """A batch's share of bad rows is above the configured threshold."""


class PublishError(InboError):
    """A table version could not be written, verified or switched to."""


class ModelCannotFit(InboError, ValueError):
    """A model has too little data to learn from (e.g. no users with positive interactions)."""


class NoPositiveExamples(InboError, ValueError):
    """The reranker's training examples hold no positive label: nothing to rank towards."""


class NotFitted(InboError, ValueError):
    """A model was asked to score before `fit` or `load`."""


class UnknownUser(InboError):
    """The user has no personal row and no fallback table exists."""

    exit_code = 4
