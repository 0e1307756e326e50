"""Why an item is recommended: the one table of reason codes, and how a code becomes a sentence.

Every candidate source tags what it proposes with a code from `REASONS` and, where the sentence
names another issue or a figure, a `reason_ref`. Tables carry codes and refs only; the sentence is
rendered where it is shown (the CLI, `inbo explain`, a frontend) from the code's template and the
catalogue. A published table version copies this list into its meta record and payloads hold
indexes into it (docs/redis-contract.md): append new codes, never reorder or remove one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from inbo.errors import DataNotFound, InboError


@dataclass(frozen=True)
class Reason:
    """A reason code: the source behind it, its sentence with `{placeholders}`, and its priority
    (when several sources propose one item, the reason with the lowest priority is shown)."""

    code: str
    source: str
    template: str
    priority: int

    @property
    def needs_ref(self) -> bool:
        return "{ref" in self.template


REASONS: tuple[Reason, ...] = (
    Reason("continue_reading", "continue_reading", "Continue reading: you are {ref}% through", 0),
    Reason("because_you_read", "als", "Because you read “{ref_title}”", 1),
    Reason("similar_to_read", "content", "Because you read “{ref_title}”", 2),
    Reason("subscribed_publisher", "fresh", "New from {publisher}, which you subscribe to", 3),
    Reason("popular_in_category", "popularity", "Popular in {category}, a topic you read", 4),
    Reason("new_this_week", "fresh", "New this week in {category}", 5),
    Reason("trending", "popularity", "Trending on INBO this week", 6),
)
"""Placeholders: `{ref}` the ref itself (percent read), `{ref_title}` the title of the issue the
ref names, `{publisher}` and `{category}` (title case) those of the recommended issue."""

BY_CODE: dict[str, Reason] = {reason.code: reason for reason in REASONS}
SOURCE_OF: dict[str, str] = {reason.code: reason.source for reason in REASONS}
"""The source each code stands for, as the published table names it."""
PRIORITY: dict[str, int] = {reason.code: reason.priority for reason in REASONS}

Catalogue = Mapping[int, Mapping[str, str]]
"""Item id -> its `title`, `publisher` and `category`: what templates are rendered with."""

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def reason(code: str) -> Reason:
    """The reason of a code; `InboError` for a code that is not in the table."""
    try:
        return BY_CODE[code]
    except KeyError:
        raise InboError(f"unknown reason code {code!r}; known: {sorted(BY_CODE)}") from None


def render(template: str, ref: int | None, item_id: int, catalogue: Catalogue) -> str:
    """A reason's sentence for `item_id`: its template with the placeholders filled in."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ("ref", "ref_title") and ref is None:
            raise InboError(f"{template!r} needs a reason ref; item {item_id} has none")
        if name == "ref":
            return str(ref)
        if name == "ref_title":
            return _catalogued(catalogue, int(ref or 0))["title"]
        if name == "publisher":
            return _catalogued(catalogue, item_id)["publisher"]
        if name == "category":
            return _catalogued(catalogue, item_id)["category"].title()
        raise InboError(f"unknown placeholder {{{name}}} in {template!r}")

    return _PLACEHOLDER.sub(value, template)


def render_frame(rows: pd.DataFrame, catalogue: Catalogue) -> pd.Series:
    """The sentence of every row (columns item_id, reason_code, reason_ref), for display."""
    refs = rows["reason_ref"].astype("Int64")
    return pd.Series(
        [
            render(reason(code).template, None if pd.isna(ref) else int(ref), int(item), catalogue)
            for item, code, ref in zip(rows["item_id"], rows["reason_code"], refs, strict=True)
        ],
        index=rows.index,
        dtype="str",
    )


def catalogue_of(items: pd.DataFrame) -> dict[int, dict[str, str]]:
    """The lake's `items` table (item_id, title, publisher, category) as a `Catalogue`."""
    frame = items.drop_duplicates("item_id", keep="last").set_index("item_id")
    records = frame[["title", "publisher", "category"]].to_dict("index")
    return {int(item): dict(record) for item, record in records.items()}


def _catalogued(catalogue: Catalogue, item_id: int) -> Mapping[str, str]:
    try:
        return catalogue[item_id]
    except KeyError:
        raise DataNotFound(
            f"item {item_id} is not in the catalogue; cannot render its reason"
        ) from None
