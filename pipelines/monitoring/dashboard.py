"""The analytics dashboard: one self-contained HTML page per nightly batch, written after it.

`write_dashboard` reads what the platform already wrote (canonical events and the published
`recs` in the lake, the ingest, validate and hourly reports, the table versions' meta records in
Redis, the registered versions and their runs in MLflow) and renders each section with plotly;
plotly.js is inlined once for the page, so it opens from disk with no network. The page goes to
`<reports>/dashboard/<batch>.html` and `index.html` (the latest).

Each number is a small pure function over DataFrames (`activity`, `context_counts`,
`reads_per_user`, `coverage`, `novelty`, `diversity`, `feature_drift`). Per-user statistics
(reads per user, diversity, the user features' drift) use a seeded sample of at most
`INBO_DASHBOARD_SAMPLE_USERS` users with a personal row, so a 1M-user night costs what a small
one does; the page says when a number is sampled. A section whose source cannot be read says so
on the page and in the log; the others still render.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from inbo import tables
from inbo.errors import DataNotFound
from inbo.lake import Lake, batch_end, batch_key
from inbo.settings import Settings, get_settings

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

log = logging.getLogger(__name__)

SEGMENTS = tables.Table("segments")
"""Users' segments (`user_id`, `segment`) per batch: the table issue #16 adds. Until it exists
the segment panel says segments are not computed yet."""
MODEL_METRICS = ("ndcg_at_10", "recall_at_10", "map_at_10")
EVENT_COLUMNS = ("user_id", "item_id", "event_type", "surface", "rec_source", "rec_variant")
NO_CONTEXT = "none"
"""Source and variant of an event outside a recommendation list (no `rec_context`)."""
CHUNK_USERS = 500
"""Users whose embedding sums are built at once by `diversity` (bounds its memory)."""


@dataclass
class Section:
    """One part of the page: its figures, the sentences that go with them, and its data source."""

    title: str
    source: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dashboard:
    """What `build_dashboard` wrote: the batch's page, the latest page, how many charts, and
    the titles of the sections that could not be drawn."""

    batch: str
    path: Path
    index: Path
    figures: int
    sections: list[str]
    failed: list[str]


# -- pure metrics ---------------------------------------------------------------------------------


def activity(events: pd.DataFrame, freq: str = "D") -> pd.DataFrame:
    """Events and distinct users per period, event type and surface (`freq` a pandas offset)."""
    period = events["ts"].dt.floor(freq).rename("period")
    grouped = events.groupby([period, events["event_type"], events["surface"].fillna("none")])
    return grouped["user_id"].agg(events="size", users="nunique").reset_index()


def active_users(events: pd.DataFrame, freq: str = "D") -> pd.DataFrame:
    """Distinct users per period and surface, with `all` for any surface."""
    period = events["ts"].dt.floor(freq).rename("period")
    surface = events["surface"].fillna("none")
    per_surface = events.groupby([period, surface])["user_id"].nunique()
    overall = events.groupby(period)["user_id"].nunique()
    overall.index = pd.MultiIndex.from_arrays([overall.index, ["all"] * len(overall)])
    both = pd.concat([per_surface, overall]).rename("users")
    return both.rename_axis(["period", "surface"]).reset_index()


def context_counts(events: pd.DataFrame) -> pd.DataFrame:
    """Impressions and clicks per recommendation source and variant (`none` outside a list)."""
    shown = events[events["event_type"].isin(["impression", "click"])]
    keys = [shown["rec_source"].fillna(NO_CONTEXT), shown["rec_variant"].fillna(NO_CONTEXT)]
    counts = shown.groupby([*keys, shown["event_type"]]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["impression", "click"], fill_value=0)
    counts.columns = ["impressions", "clicks"]
    return counts.rename_axis(["source", "variant"]).reset_index()


def with_ctr(counts: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`counts` summed over `by` with clicks per impression (NaN without impressions)."""
    summed = counts.groupby(by, as_index=False)[["impressions", "clicks"]].sum()
    return summed.assign(
        ctr=summed["clicks"] / summed["impressions"].where(summed["impressions"] > 0)
    )


def reads_per_user(events: pd.DataFrame, read_from: float, by: str | None = None) -> pd.DataFrame:
    """Completed reads per exposed user, per source and variant (and `by`, e.g. a segment).

    A read (a `read` event at least `read_from` through) counts for the source and variant of the
    user's last click on that issue before it; reads with no click before are left out. The
    denominator is the users shown an impression from that source and variant.
    """
    keys = ["source", "variant", *([by] if by else [])]
    named = events.rename(columns={"rec_source": "source", "rec_variant": "variant"})
    named = named.fillna({"source": NO_CONTEXT, "variant": NO_CONTEXT})
    exposed = named[named["event_type"] == "impression"].groupby(keys)["user_id"].nunique()
    clicks = named.loc[named["event_type"] == "click", ["user_id", "item_id", "ts", *keys]]
    reads = named.loc[
        (named["event_type"] == "read") & (named["read_fraction"] >= read_from),
        ["user_id", "item_id", "ts"],
    ]
    first_reads = reads.sort_values("ts").drop_duplicates(["user_id", "item_id"])
    attributed = pd.merge_asof(
        first_reads.sort_values("ts"),
        clicks.sort_values("ts"),
        on="ts",
        by=["user_id", "item_id"],
        direction="backward",
    ).dropna(subset=["source"])
    counted = attributed.groupby(keys).size()
    frame = pd.DataFrame({"users": exposed, "reads": counted}).fillna(0).reset_index()
    frame = frame[frame["users"] > 0]
    return frame.assign(reads_per_user=frame["reads"] / frame["users"])


def coverage(recommended: pd.Series, catalogue: pd.Series) -> float:
    """Share of the catalogue's items that appear in at least one list."""
    items = pd.unique(catalogue)
    if len(items) == 0:
        return 0.0
    return float(np.isin(items, pd.unique(recommended)).mean())


def novelty(recs: pd.DataFrame, item_users: pd.Series, users: int) -> float:
    """Mean self-information, -log2 p(i), of the recommended items, over every (user, item) row.

    p(i) is the share of users who interacted with the item, smoothed as (n_i + 1) / (users + 1)
    so an item nobody touched yet is the most novel, not infinitely so.
    """
    if recs.empty:
        return 0.0
    counts = recs["item_id"].map(item_users).fillna(0).to_numpy(dtype=float)
    return float(np.mean(-np.log2((counts + 1.0) / (users + 1.0))))


def diversity(recs: pd.DataFrame, vectors: pd.DataFrame) -> float:
    """Intra-list diversity: 1 - mean pairwise cosine of each list's item embeddings, averaged
    over the lists with two or more embedded items.

    With unit vectors the pairwise cosines of a list sum to (|sum v|^2 - k) / 2, so one sum per
    list replaces the k^2 products. `vectors` is indexed by item_id, one row of floats per item.
    """
    matrix = vectors.to_numpy(dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = pd.DataFrame(matrix / np.where(norms > 0, norms, 1.0), index=vectors.index)
    known = recs[recs["item_id"].isin(unit.index)]
    scores = []
    users = known["user_id"].unique()
    for start in range(0, len(users), CHUNK_USERS):
        part = known[known["user_id"].isin(users[start : start + CHUNK_USERS])]
        sums = unit.loc[part["item_id"]].groupby(part["user_id"].to_numpy()).sum()
        k = part.groupby("user_id").size().reindex(sums.index).to_numpy(dtype=float)
        squared = (sums.to_numpy() ** 2).sum(axis=1)
        listed = k >= 2
        mean_cos = (squared[listed] - k[listed]) / (k[listed] * (k[listed] - 1))
        scores.append(1.0 - mean_cos)
    joined = np.concatenate(scores) if scores else np.array([])
    return float(joined.mean()) if len(joined) else float("nan")


def feature_drift(current: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per numeric column: two-sample Kolmogorov-Smirnov statistic and p-value, the means, and
    `drifted` when p < 0.05 (the usual test for numeric features of tabular data)."""
    from scipy.stats import ks_2samp

    rows = []
    for column in current.columns.intersection(reference.columns):
        now, before = current[column].dropna(), reference[column].dropna()
        if len(now) == 0 or len(before) == 0:
            continue
        test = ks_2samp(now.to_numpy(dtype=float), before.to_numpy(dtype=float))
        rows.append(
            {
                "feature": column,
                "ks_statistic": float(test.statistic),
                "p_value": float(test.pvalue),
                "current_mean": float(now.mean()),
                "reference_mean": float(before.mean()),
                "drifted": bool(test.pvalue < 0.05),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["feature", "ks_statistic", "p_value", "current_mean", "reference_mean", "drifted"],
    )


def sample_users(users: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """At most `limit` of `users`, seeded, sorted: the same night gives the same sample."""
    if len(users) <= limit:
        return np.sort(users)
    return np.sort(np.random.default_rng(seed).choice(users, size=limit, replace=False))


# -- reading the platform's outputs ---------------------------------------------------------------


def nightly_batches(lake: Lake, through: str, nights: int) -> list[str]:
    """The nightly batches up to `through`, oldest first: those with a score plan."""
    return [name for name in lake.names(tables.SCORE_PLANS) if name <= through][-nights:]


def per_day(
    lake: Lake,
    end: datetime,
    days: int,
    columns: tuple[str, ...],
    summarise: Callable[[pd.DataFrame], pd.DataFrame],
) -> pd.DataFrame:
    """`summarise` of each of the `days` before `end`, one day's events (only `columns`) in
    memory at a time, with the day in a `period` column; so a 1M-user lake costs one day."""
    from features.interactions import load_events

    parts = []
    for offset in range(days, 0, -1):
        start = end - timedelta(days=offset)
        events, _ = load_events(lake, start, start + timedelta(days=1), columns=columns)
        parts.append(summarise(events).assign(period=pd.Timestamp(start)))
    return pd.concat(parts, ignore_index=True)


def batch_users(lake: Lake, batch: str, limit: int) -> np.ndarray:
    users = lake.read_batch(tables.RECS_USERS, batch, columns=["user_id"])["user_id"].to_numpy()
    return sample_users(users, limit)


def shard_files(lake: Lake, batch: str) -> list[str]:
    paths = lake.files(tables.RECS.path, f"batch={batch}/*/part.parquet")
    if not paths:
        raise DataNotFound(f"batch {batch} has no recs")
    return paths


def recs_of(lake: Lake, batch: str, users: np.ndarray) -> pd.DataFrame:
    """The published lists (user_id, item_id) of `users` in the batch."""
    keep = pc.field("user_id").isin(users)
    return lake.read_files(
        shard_files(lake, batch), tables.RECS.schema, keep, ["user_id", "item_id"]
    )


def recommended_items(lake: Lake, batch: str) -> np.ndarray:
    """Every item in at least one of the batch's lists, one shard file in memory at a time."""
    found = [
        lake.read_files([path], tables.RECS.schema, columns=["item_id"])["item_id"].unique()
        for path in shard_files(lake, batch)
    ]
    return np.unique(np.concatenate(found))


# -- sections -------------------------------------------------------------------------------------


def activity_section(lake: Lake, settings: Settings, batch: str) -> Section:
    import plotly.express as px

    end = batch_end(batch)
    columns = ("user_id", "event_type", "surface")
    days = settings.dashboard_days
    counts = per_day(lake, end, days, columns, lambda day: activity(day).drop(columns="period"))
    users = per_day(lake, end, days, columns, lambda day: active_users(day).drop(columns="period"))
    section = Section(
        "Events and active users",
        f"canonical events in the lake (`user_events`), the {settings.dashboard_days} days "
        f"before {end:%Y-%m-%d %H:%M} UTC, per day",
    )
    section.figures.append(
        px.line(
            counts.groupby(["period", "event_type"], as_index=False)["events"].sum(),
            x="period",
            y="events",
            color="event_type",
            markers=True,
            title="Events per day by kind",
        )
    )
    section.figures.append(
        px.bar(
            counts.groupby(["period", "surface"], as_index=False)["events"].sum(),
            x="period",
            y="events",
            color="surface",
            title="Events per day by surface",
        )
    )
    section.figures.append(
        px.line(
            users,
            x="period",
            y="users",
            color="surface",
            markers=True,
            title="Active users per day by surface",
        )
    )
    hours = per_day(
        lake, end, 1, columns, lambda day: activity(day, "h").rename(columns={"period": "hour"})
    )
    hourly = hours.groupby(["hour", "event_type"], as_index=False)["events"]
    section.figures.append(
        px.bar(
            hourly.sum(),
            x="hour",
            y="events",
            color="event_type",
            title="Events per hour by kind, last day",
        )
    )
    return section


def engagement_section(lake: Lake, settings: Settings, batch: str) -> Section:
    import plotly.express as px

    end = batch_end(batch)
    days = settings.dashboard_days
    columns = ("event_type", "rec_source", "rec_variant")
    counts = per_day(lake, end, days, columns, context_counts)
    counts = counts[counts["source"] != NO_CONTEXT]
    daily = with_ctr(counts, ["period", "source"])
    users = batch_users(lake, batch, settings.dashboard_sample_users)
    sampled = daily_events_of(lake, end, days, users)
    section = Section(
        "CTR and reads per user",
        f"impressions, clicks and reads in the lake's `user_events` ({days} days) with their "
        "`rec_context` (source, variant; CTR only of events in a list); reads per user from a "
        "seeded sample of "
        f"{len(users):,} users with a personal row in batch {batch}",
    )
    ctr = with_ctr(counts, ["source", "variant"])
    section.figures.append(
        px.bar(
            ctr,
            x="source",
            y="ctr",
            color="variant",
            barmode="group",
            hover_data=["impressions", "clicks"],
            title="CTR by source and variant",
        )
    )
    section.figures.append(
        px.line(
            daily, x="period", y="ctr", color="source", markers=True, title="CTR per day by source"
        )
    )
    reads = reads_per_user(sampled, settings.continue_reading_max)
    section.figures.append(
        px.bar(
            reads,
            x="source",
            y="reads_per_user",
            color="variant",
            barmode="group",
            hover_data=["users", "reads"],
            title="Completed reads per exposed user by source and variant (sampled)",
        )
    )
    section.notes.append(
        f"A read counts when it reaches {settings.continue_reading_max:.0%} of the issue, for "
        "the source and variant of the user's last click on that issue before it."
    )
    if not lake.has_batch(SEGMENTS, batch):
        section.notes.append(
            "By segment: segments are not computed yet (no `segments` table in the lake for "
            f"batch {batch}); this panel appears once the nightly writes one."
        )
        return section
    segments = lake.read_batch(SEGMENTS, batch, columns=["user_id", "segment"])
    joined = sampled.merge(segments, on="user_id")
    by_segment = reads_per_user(joined, settings.continue_reading_max, by="segment")
    segment_ctr = with_ctr(context_counts_by(joined, "segment"), ["segment"])
    section.figures.append(
        px.bar(segment_ctr, x="segment", y="ctr", title="CTR by segment (sampled)")
    )
    section.figures.append(
        px.bar(
            by_segment.groupby("segment", as_index=False)[["reads", "users"]]
            .sum()
            .assign(reads_per_user=lambda f: f["reads"] / f["users"]),
            x="segment",
            y="reads_per_user",
            title="Reads per exposed user by segment (sampled)",
        )
    )
    return section


def context_counts_by(events: pd.DataFrame, by: str) -> pd.DataFrame:
    """`context_counts` per value of the column `by`."""
    parts = events.groupby(by).apply(context_counts, include_groups=False)
    return parts.reset_index(level=0)


def daily_events_of(lake: Lake, end: datetime, days: int, users: np.ndarray) -> pd.DataFrame:
    """The events of `users` only (filtered while reading) with what attributing reads needs."""
    from features.interactions import load_events

    events, _ = load_events(
        lake,
        end - timedelta(days=days),
        end,
        filters=pc.field("user_id").isin(users),
        columns=("user_id", "item_id", "event_type", "read_fraction", "rec_source", "rec_variant"),
    )
    return events


def models_section(lake: Lake, settings: Settings, batch: str) -> Section:
    import plotly.graph_objects as go

    history = model_history(settings, nightly_batches(lake, batch, settings.dashboard_days))
    section = Section(
        "Model metrics across nights",
        "MLflow: each night's registered challenger (its run's held-out metrics), the champion's "
        "configuration on the same window (the evaluation run), the gate's `gate.decision` tag",
    )
    if history.empty:
        section.notes.append("No registered model versions in MLflow for these nights yet.")
        return section
    for model, rows in history.groupby("model"):
        figure = go.Figure()
        figure.add_scatter(
            x=rows["batch"],
            y=rows["ndcg_at_10"],
            name="challenger ndcg_at_10",
            mode="lines+markers",
        )
        figure.add_scatter(
            x=rows["batch"],
            y=rows["champion_ndcg_at_10"],
            name="champion ndcg_at_10",
            mode="lines+markers",
        )
        for name in MODEL_METRICS[1:]:
            figure.add_scatter(
                x=rows["batch"],
                y=rows[name],
                name=f"challenger {name}",
                mode="lines+markers",
                visible="legendonly",
            )
        promoted = rows[rows["decision"] == "promoted"]
        figure.add_scatter(
            x=promoted["batch"],
            y=promoted["ndcg_at_10"],
            name="promoted",
            mode="markers",
            marker={"symbol": "star", "size": 16},
            text=[f"v{v}" for v in promoted["version"]],
        )
        figure.update_layout(title=f"{model}: held-out metrics per night (stars: promoted)")
        section.figures.append(figure)
    return section


def model_history(settings: Settings, batches: list[str]) -> pd.DataFrame:
    """One row per registered version of these nights: model, version, batch, decision, its held-
    out metrics and `champion_ndcg_at_10` (the champion configuration on that night's window)."""
    from pipelines.monitoring.health import missing_sqlite_file
    from pipelines.promotion import GATED
    from pipelines.registry import list_models
    from pipelines.tracking import read_run, step_run_id

    columns = ["model", "version", "batch", "decision", *MODEL_METRICS, "champion_ndcg_at_10"]
    if missing_sqlite_file(settings.mlflow_uri) or not batches:
        return pd.DataFrame(columns=columns)
    config = {str(kind): name for kind, name in GATED}
    evaluations = {b: step_run_id(settings, "evaluate", b) for b in batches}
    compared = {b: read_run(settings, run).metrics for b, run in evaluations.items() if run}
    rows = []
    for version in list_models(settings):
        if version.batch not in batches:
            continue
        logged = read_run(settings, version.run_id).metrics
        champion = compared.get(version.batch, {}).get(
            f"ndcg_at_10/{config[version.model]}_champion"
        )
        rows.append(
            {
                "model": version.model,
                "version": version.version,
                "batch": version.batch,
                "decision": version.decision,
                **{name: logged.get(name, np.nan) for name in MODEL_METRICS},
                "champion_ndcg_at_10": np.nan if champion is None else champion,
            }
        )
    return pd.DataFrame(rows, columns=columns).sort_values(["model", "batch"], ignore_index=True)


def publishing_section(lake: Lake, settings: Settings, batch: str) -> Section:
    import plotly.express as px

    section = Section(
        "Freshness and publish times",
        "the table versions' meta records in Redis (nightly: created to activated) and the "
        "hourly refresh reports in the lake (`_reports/hourly`)",
    )
    nightly = publish_times(settings, batch)
    if nightly.empty:
        section.notes.append("No table version in Redis (none published, or all collected).")
    else:
        section.figures.append(
            px.bar(
                nightly,
                x="batch",
                y="seconds",
                color="status",
                hover_data=["version", "users"],
                title="Nightly publish: begin to activate, seconds",
            )
        )
    first = batch_key(batch_end(batch) - timedelta(days=settings.dashboard_days))
    hourly = hourly_reports(lake, first, batch)
    if hourly.empty:
        section.notes.append("No hourly refresh published in these days.")
    else:
        section.figures.append(
            px.line(
                hourly,
                x="published_at",
                y="freshness_seconds",
                markers=True,
                hover_data=["batch", "users", "seconds"],
                title="Hourly refresh: newest event to published, seconds",
            )
        )
    return section


def publish_times(settings: Settings, through: str) -> pd.DataFrame:
    """Each table version still in Redis of a batch up to `through`: batch, status, users,
    seconds from created to activated."""
    from inbo.services import running_redis
    from pipelines.publish.contract import Keys
    from pipelines.publish.lifecycle import list_versions
    from pipelines.publish.redis_io import read_meta

    rows = []
    with running_redis(settings) as client:
        keys = Keys(settings.redis_prefix)
        for info in list_versions(
            client, settings.redis_prefix, rollback_window_seconds=settings.version_ttl_seconds
        ):
            meta = read_meta(client, keys, info.version)
            if not meta.get("activated_at") or meta["batch"] > through:
                continue
            took = pd.Timestamp(meta["activated_at"]) - pd.Timestamp(meta["created_at"])
            rows.append(
                {
                    "version": info.version,
                    "batch": meta["batch"],
                    "status": "live" if info.live else info.status,
                    "users": meta["counts"]["users"],
                    "seconds": took.total_seconds(),
                }
            )
    return pd.DataFrame(rows, columns=["version", "batch", "status", "users", "seconds"])


def hourly_reports(lake: Lake, after: str, through: str) -> pd.DataFrame:
    """The published hourly refreshes of the batches after `after`, up to `through`."""
    from pipelines.hourly import PUBLISHED

    rows = [
        json.loads(lake.read_json(tables.HOURLY_REPORTS, n))
        for n in lake.names(tables.HOURLY_REPORTS)
        if after < n <= through
    ]
    frame = pd.DataFrame(
        [r for r in rows if r["status"] == PUBLISHED],
        columns=["batch", "published_at", "freshness_seconds", "users", "seconds"],
    )
    return frame.assign(published_at=pd.to_datetime(frame["published_at"]))


def quality_section(lake: Lake, settings: Settings, batch: str) -> Section:
    import plotly.express as px

    first = batch_key(batch_end(batch) - timedelta(days=settings.dashboard_days))
    rates = batch_rates(lake, [n for n in lake.names(tables.INGEST_REPORTS) if first < n <= batch])
    section = Section(
        "Quarantine and conversion",
        "the lake's ingest reports (`_reports/ingest`: converted / extracted) and validate "
        "reports (`_reports/validate`: bad-row share, ingest's quarantine included, and status)",
    )
    if rates.empty:
        section.notes.append("No ingest report in these days.")
        return section
    conversion = px.line(
        rates.dropna(subset=["conversion"]),
        x="batch",
        y="conversion",
        color="table",
        markers=True,
        title="Conversion rate per batch",
    )
    quarantine = px.line(
        rates.dropna(subset=["quarantine"]),
        x="batch",
        y="quarantine",
        color="table",
        markers=True,
        hover_data=["status"],
        title="Quarantined share per batch",
    )
    quarantine.add_hline(
        y=settings.quarantine_threshold,
        line_dash="dash",
        annotation_text="INBO_QUARANTINE_THRESHOLD",
    )
    section.figures += [conversion, quarantine]
    held = sorted(set(rates.loc[rates["status"].isin(["held", "accepted"]), "batch"]))
    if held:
        section.notes.append(f"Held or accepted by hand: {', '.join(held)}.")
    return section


def batch_rates(lake: Lake, batches: list[str]) -> pd.DataFrame:
    """Per batch and table: conversion (ingest), quarantined share and status (validate)."""
    from pipelines import ingest, validate

    rows = []
    for batch in batches:
        report = ingest.read_report(lake, batch)
        try:
            checked: Any = validate.read_report(lake, batch)
        except DataNotFound:
            checked = None
        names = set(report.converted) | set(checked.bad_share if checked else {})
        for table in sorted(names):
            extracted = report.extracted.get(table, 0)
            rows.append(
                {
                    "batch": batch,
                    "table": table,
                    "conversion": report.converted[table] / extracted
                    if table in report.converted and extracted
                    else np.nan,
                    "quarantine": checked.bad_share.get(table, np.nan) if checked else np.nan,
                    "status": checked.status if checked else "not validated",
                }
            )
    return pd.DataFrame(rows, columns=["batch", "table", "conversion", "quarantine", "status"])


def published_section(lake: Lake, settings: Settings, batch: str) -> Section:
    from plotly.subplots import make_subplots

    nights = nightly_batches(lake, batch, settings.dashboard_days)
    rows = [list_quality(lake, settings, night) for night in nights]
    frame = pd.DataFrame(rows)
    section = Section(
        "Coverage, novelty and diversity of what was published",
        "the scored shard outputs in the lake (`recs`), the catalogue (`items`), the interaction "
        "table (popularity) and the item embeddings (`features/embeddings`); novelty and "
        f"diversity over a seeded sample of at most {settings.dashboard_sample_users:,} users",
    )
    figure = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("coverage (share of catalogue)", "novelty (bits)", "intra-list diversity"),
    )
    for col, name in enumerate(("coverage", "novelty", "diversity"), start=1):
        figure.add_scatter(
            x=frame["batch"], y=frame[name], name=name, mode="lines+markers", row=1, col=col
        )
    figure.update_layout(title="Published lists per night", showlegend=False)
    section.figures.append(figure)
    section.notes.append(
        "Novelty: mean -log2 p(i) over recommended items, p(i) the (smoothed) share of users who "
        "interacted with the item. Diversity: 1 - mean pairwise cosine of a list's MiniLM vectors."
    )
    return section


def list_quality(lake: Lake, settings: Settings, batch: str) -> dict[str, Any]:
    """Coverage (every list), novelty and diversity (a user sample) of one night's lists."""
    from features.embeddings import latest_table_batch

    catalogue = lake.read_batch(tables.ITEMS, batch, columns=["item_id"])["item_id"]
    covered = coverage(pd.Series(recommended_items(lake, batch)), catalogue)
    users = batch_users(lake, batch, settings.dashboard_sample_users)
    recs = recs_of(lake, batch, users)
    # the interaction table has one row per (user, item): an item's rows are its users
    popularity = lake.read_batch(tables.INTERACTIONS, batch, columns=["item_id"])["item_id"]
    readers = lake.read_batch(tables.INTERACTIONS, batch, columns=["user_id"])["user_id"].nunique()
    novel = novelty(recs, popularity.value_counts(), readers)
    del popularity
    vectors_batch = latest_table_batch(lake, batch)
    diverse = float("nan")
    if vectors_batch is not None:
        embedded = lake.read_batch(
            tables.EMBEDDINGS, vectors_batch, columns=["item_id", "embedding"]
        )
        vectors = pd.DataFrame(
            np.stack(embedded["embedding"].to_numpy()), index=embedded["item_id"]
        )
        diverse = diversity(recs, vectors)
    return {"batch": batch, "coverage": covered, "novelty": novel, "diversity": diverse}


def drift_section(lake: Lake, settings: Settings, batch: str) -> Section:
    import plotly.express as px

    section = Section(
        "Drift of the item and user features",
        "the reranker's item features of each night (`features/item_ranking`) and its user "
        "features (`features.ranking.user_features` over the lake's events of a seeded sample "
        "of users), this night against the previous one; two-sample Kolmogorov-Smirnov tests",
    )
    earlier = nightly_batches(lake, batch, 2)
    if len(earlier) < 2 or earlier[-1] != batch:
        section.notes.append(f"No previous night before {batch}: nothing to compare yet.")
        return section
    previous = earlier[0]
    frames = {}
    for name, reader in (("item", item_features_of), ("user", user_features_of)):
        drift = feature_drift(reader(lake, settings, batch), reader(lake, settings, previous))
        frames[name] = drift.assign(kind=name)
    result = pd.concat(frames.values(), ignore_index=True)
    section.figures.append(
        px.bar(
            result,
            x="feature",
            y="ks_statistic",
            color="drifted",
            facet_col="kind",
            hover_data=["p_value", "current_mean", "reference_mean"],
            title=f"Kolmogorov-Smirnov statistic, {batch} vs {previous} (drifted: p < 0.05)",
        ).update_xaxes(matches=None)
    )
    drifted = result.loc[result["drifted"], "feature"].tolist()
    section.notes.append(
        f"{len(drifted)} of {len(result)} features drifted"
        + (f": {', '.join(drifted)}." if drifted else ".")
    )
    return section


def item_features_of(lake: Lake, settings: Settings, batch: str) -> pd.DataFrame:
    from features.ranking import ITEM_FEATURES

    return lake.read_batch(tables.ITEM_RANKING, batch, columns=list(ITEM_FEATURES))


def user_features_of(lake: Lake, settings: Settings, batch: str) -> pd.DataFrame:
    """The reranker's user features at the batch end, for a seeded sample of its users."""
    from features.interactions import load_events
    from features.ranking import HISTORY_DAYS, user_features

    end = batch_end(batch)
    users = batch_users(lake, batch, settings.dashboard_sample_users)
    events, _ = load_events(
        lake, end - timedelta(days=HISTORY_DAYS), end, pc.field("user_id").isin(users), ["user_id"]
    )
    return user_features(events, end)


SECTIONS: tuple[Callable[[Lake, Settings, str], Section], ...] = (
    activity_section,
    engagement_section,
    models_section,
    publishing_section,
    quality_section,
    published_section,
    drift_section,
)


# -- the page -------------------------------------------------------------------------------------


def build_dashboard(interval_end: datetime, settings: Settings | None = None) -> Dashboard:
    """Render every section for the batch ending at `interval_end` and write the page."""
    settings = settings or get_settings()
    batch = batch_key(interval_end)
    lake = Lake(settings.lake)
    sections, failed = [], []
    for make in SECTIONS:
        try:
            sections.append(make(lake, settings, batch))
        except Exception as exc:  # a source that cannot be read leaves only its own section out
            log.warning("dashboard section %s failed: %s", make.__name__, exc)
            title = make.__name__.removesuffix("_section").replace("_", " ")
            sections.append(Section(title, "", notes=[f"Could not be drawn: {exc}"]))
            failed.append(title)
    folder = settings.reports_dir / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{batch}.html"
    temp = folder / f".tmp-{batch}.html"
    temp.write_text(render_page(batch, sections, datetime.now(UTC)))
    temp.replace(path)
    index = folder / "index.html"
    if batch >= latest_page(folder):
        shutil.copyfile(path, folder / ".tmp-index.html")
        (folder / ".tmp-index.html").replace(index)
    figures = sum(len(s.figures) for s in sections)
    log.info(
        "dashboard %s: %d charts in %d sections (%d failed)",
        path,
        figures,
        len(sections),
        len(failed),
    )
    return Dashboard(batch, path, index, figures, [s.title for s in sections], failed)


def latest_night(settings: Settings | None = None) -> datetime | None:
    """The end of the newest nightly batch that was scored, None before any."""
    settings = settings or get_settings()
    batches = Lake(settings.lake).names(tables.SCORE_PLANS)
    return batch_end(batches[-1]) if batches else None


def write_dashboard(interval_end: datetime, settings: Settings | None = None) -> Path:
    """The nightly's last task: write the batch's dashboard; return its path."""
    return build_dashboard(interval_end, settings).path


def latest_page(folder: Path) -> str:
    """The newest batch with a page in `folder` ('' when none)."""
    pages = [p.stem for p in folder.glob("*.html") if p.stem[:1].isdigit()]
    return max(pages, default="")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>INBO Recs dashboard {batch}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 2rem 2rem; color: #222; }}
header {{ border-bottom: 1px solid #ddd; padding: 1rem 0; }}
nav a {{ margin-right: 1rem; }}
section {{ margin-top: 2rem; }}
.source {{ color: #666; font-size: 0.9rem; }}
.note {{ background: #f6f6f0; padding: 0.5rem 0.75rem; border-left: 3px solid #c9b458; }}
.chart {{ min-height: 420px; }}
</style>
<script type="text/javascript">{plotly}</script>
</head><body data-charts="{charts}">
<header><h1>INBO Recs, nightly batch {batch}</h1>
<p class="source">Written {written:%Y-%m-%d %H:%M} UTC from the lake, Redis and MLflow;
opens offline (plotly.js is in this file).</p>
<nav>{nav}</nav></header>
{body}
</body></html>
"""


def render_page(batch: str, sections: list[Section], written: datetime) -> str:
    """The whole page: plotly.js once in the head, each figure a div with its own call."""
    from plotly.offline import get_plotlyjs

    parts, nav, number = [], [], 0
    for position, section in enumerate(sections):
        anchor = f"section-{position}"
        nav.append(f'<a href="#{anchor}">{html.escape(section.title)}</a>')
        blocks = [f'<section id="{anchor}"><h2>{html.escape(section.title)}</h2>']
        if section.source:
            blocks.append(f'<p class="source">From {html.escape(section.source)}.</p>')
        blocks += [f'<p class="note">{html.escape(note)}</p>' for note in section.notes]
        for figure in section.figures:
            number += 1
            blocks.append(figure_div(figure, f"chart-{number}"))
        parts.append("\n".join([*blocks, "</section>"]))
    return PAGE.format(
        batch=batch,
        plotly=get_plotlyjs(),
        charts=number,
        written=written,
        nav="".join(nav),
        body="\n".join(parts),
    )


def figure_div(figure: Figure, div_id: str) -> str:
    import plotly.io as pio

    figure.update_layout(template="plotly_white", margin={"t": 60})
    inner = pio.to_html(
        figure,
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="chart">{inner}</div>'
