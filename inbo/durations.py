"""Durations as people read them, the same in every report and command."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """A duration as people read it: `5 d 3 h`, `5 h 20 min`, `4 min 10 s`, `12 s`."""
    days, rest = divmod(round(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
