"""Row-level validation with Great Expectations: good rows go on, bad rows go to quarantine.

`validate` runs one named suite (see `validation.suites`) over a frame and splits it;
`exceeds` tells whether a batch's share of bad rows is too high, `enforce_threshold` fails it;
`validation.docs.record` keeps each result, with that verdict, in the Data Docs history.
Importing this package is cheap: pandas and great_expectations load on the first `validate` call.
"""

from validation.checks import ValidationResult, enforce_threshold, exceeds, validate

__all__ = ["ValidationResult", "enforce_threshold", "exceeds", "validate"]
