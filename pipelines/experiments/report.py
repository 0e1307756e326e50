"""An experiment's HTML report: one self-contained page per analysis, opened from disk.

What it shows: the verdict per treatment, the sample-ratio check (with a mismatch the verdicts
are withheld and the page says so first), every metric's readout as the lake table holds it, the
primary metric's cumulative lift with its fixed-horizon and always-valid intervals over time,
and the exposed users per variant over time. plotly.js is inlined once, so it needs no network.
"""

from __future__ import annotations

import html
import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from inbo.settings import Settings
from pipelines.experiments.analysis import Readout
from pipelines.experiments.statistics import DEFAULT_SRM_THRESHOLD, MetricResult

log = logging.getLogger(__name__)

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Experiment {name} at {batch}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 2rem 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.alarm {{ background: #fbe9e7; border-left: 4px solid #c62828; padding: 0.5rem 0.75rem; }}
.source {{ color: #666; font-size: 0.9rem; }}
.chart {{ min-height: 420px; }}
</style>
<script type="text/javascript">{plotly}</script>
</head><body>
<header><h1>Experiment {name}</h1>
<p class="source">Window {start} to {end} UTC; written {written} UTC from the lake's
canonical events (exposure: users shown at least one item of the experiment).</p></header>
{body}
</body></html>
"""


def report_path(settings: Settings, readout: Readout) -> Path:
    return settings.reports_dir / "experiments" / readout.experiment / readout.batch / "report.html"


def write_report(readout: Readout, timeline: list[Readout], settings: Settings) -> Path:
    """Write the readout's page; returns its path."""
    from plotly.offline import get_plotlyjs

    path = report_path(settings, readout)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [
        _verdicts(readout),
        _sample_ratio(readout),
        _results_table(readout),
        *_lift_figures(timeline),
        _exposure_figure(timeline),
    ]
    page = PAGE.format(
        name=html.escape(readout.experiment),
        batch=readout.batch,
        plotly=get_plotlyjs(),
        start=f"{readout.window_start:%Y-%m-%d %H:%M}",
        end=f"{readout.window_end:%Y-%m-%d %H:%M}",
        written=f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        body="\n".join(body),
    )
    path.write_text(page, encoding="utf-8")
    log.info("experiment report: %s", path)
    return path


def _verdicts(readout: Readout) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{html.escape(v)}</td></tr>"
        for t, v in readout.verdicts.items()
    )
    return (
        "<section><h2>Verdict</h2><table><tr><th>variant</th><th>against the control</th></tr>"
        f"{rows}</table></section>"
    )


def _sample_ratio(readout: Readout) -> str:
    ratio = readout.ratio
    total = sum(ratio.counts.values())
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{count:,}</td>"
        f"<td>{ratio.expected_shares[name] * total:,.1f}</td>"
        f"<td>{readout.impressions.get(name, 0):,}</td></tr>"
        for name, count in ratio.counts.items()
    )
    alarm = (
        f'<p class="alarm">Sample ratio mismatch (p &lt; {DEFAULT_SRM_THRESHOLD:g}): exposures do not follow the '
        "configured split, so every verdict is withheld. Look for what drops or duplicates "
        "one variant's users (a failing shard, a redirect, a bot filter) before reading on.</p>"
        if ratio.mismatch
        else ""
    )
    return (
        f"<section><h2>Sample ratio</h2>{alarm}<table><tr><th>variant</th><th>exposed users</th>"
        f"<th>expected</th><th>impressions</th></tr>{rows}</table>"
        f"<p>chi-square {ratio.statistic:.3f}, p = {ratio.pvalue:.4g}</p></section>"
    )


def _results_table(readout: Readout) -> str:
    head = (
        "<tr><th>metric</th><th>role</th><th>variant</th><th>control</th><th>treatment</th>"
        "<th>lift</th><th>95% CI</th><th>p</th><th>p (BH)</th><th>CUPED variance cut</th>"
        "<th>always-valid CI (absolute)</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{html.escape(r.metric)}</td><td>{r.role}</td><td>{html.escape(r.treatment)}</td>"
        f"<td>{r.control_value:.5g}</td><td>{r.treatment_value:.5g}</td>"
        f"<td>{r.rel_effect:+.2%}</td>"
        f"<td>[{r.rel_effect_ci[0]:+.2%}, {r.rel_effect_ci[1]:+.2%}]</td>"
        f"<td>{html.escape(p_value(r.pvalue))}</td>"
        f"<td>{html.escape(p_value(r.pvalue_adjusted))}</td>"
        f"<td>{r.variance_reduction:.1%}</td>"
        f"<td>[{r.sequential_ci[0]:+.5g}, {r.sequential_ci[1]:+.5g}]</td></tr>"
        for r in readout.results
    )
    note = (
        "<p class='source'>Lift = treatment / control - 1, CUPED-adjusted with the pre-period's "
        "counts; ratio metrics by the delta method over users. The fixed-horizon interval holds at "
        "the planned end; the always-valid one at every look. p (BH): Benjamini-Hochberg across "
        "the secondary metrics.</p>"
    )
    if not readout.results:
        return "<section><h2>Metrics</h2><p>No readout: verdicts withheld.</p></section>"
    return f"<section><h2>Metrics</h2><table>{head}{rows}</table>{note}</section>"


def p_value(p: float) -> str:
    """A p-value as the page prints it: four significant digits; one that underflowed to 0 in
    double precision as an upper bound."""
    return "< 1e-15" if p < 1e-15 else f"{p:.4g}"


def _timeline_frame(timeline: list[Readout]) -> pd.DataFrame:
    rows = [
        {
            "at": readout.window_end,
            "treatment": result.treatment,
            "lift": result.rel_effect,
            "lower": result.rel_effect_ci[0],
            "upper": result.rel_effect_ci[1],
            **_relative_sequential(result),
            "metric": result.metric,
        }
        for readout in timeline
        for result in readout.results
        if result.role == "primary"
    ]
    return pd.DataFrame(rows)


def _relative_sequential(result: MetricResult) -> dict[str, float]:
    """The always-valid interval on the relative scale: tea-tasting's relative interval (which
    carries the control's own uncertainty) widened by the ratio of the always-valid to the
    fixed-horizon half-width of the absolute effect. NaN where the effect has no spread."""
    fixed = result.effect_ci[1] - result.effect_ci[0]
    if not fixed > 0:
        return {"seq_lower": math.nan, "seq_upper": math.nan}
    widen = (result.sequential_ci[1] - result.sequential_ci[0]) / fixed
    lift = result.rel_effect
    return {
        "seq_lower": lift + (result.rel_effect_ci[0] - lift) * widen,
        "seq_upper": lift + (result.rel_effect_ci[1] - lift) * widen,
    }


def _lift_figures(timeline: list[Readout]) -> list[str]:
    import plotly.graph_objects as go

    from pipelines.monitoring.dashboard import figure_div

    frame = _timeline_frame(timeline)
    if frame.empty:
        return ["<section><h2>Cumulative lift</h2><p>No readout yet.</p></section>"]
    divs = []
    for number, (treatment, part) in enumerate(frame.groupby("treatment", sort=False), 1):
        figure = go.Figure()
        for lower, upper, name, colour in (
            ("seq_lower", "seq_upper", "always-valid interval", "rgba(198,40,40,0.12)"),
            ("lower", "upper", "95% fixed-horizon interval", "rgba(21,101,192,0.25)"),
        ):
            figure.add_trace(
                go.Scatter(
                    x=[*part["at"], *part["at"][::-1]],
                    y=[*part[upper], *part[lower][::-1]],
                    fill="toself",
                    fillcolor=colour,
                    mode="lines",
                    line={"width": 0},
                    name=name,
                )
            )
        figure.add_trace(
            go.Scatter(x=part["at"], y=part["lift"], name="lift", mode="lines+markers")
        )
        figure.add_hline(y=0, line_dash="dot")
        figure.update_layout(
            title=f"Cumulative lift of {part['metric'].iloc[0]}: {treatment} against the control",
            yaxis_tickformat="+.0%",
        )
        divs.append(figure_div(figure, f"lift-{number}"))
    return ["<section><h2>Cumulative lift</h2>", *divs, "</section>"]


def _exposure_figure(timeline: list[Readout]) -> str:
    import plotly.graph_objects as go

    from pipelines.monitoring.dashboard import figure_div

    figure = go.Figure()
    for variant in timeline[-1].users:
        figure.add_trace(
            go.Scatter(
                x=[r.window_end for r in timeline],
                y=[r.users[variant] for r in timeline],
                name=variant,
                mode="lines+markers",
            )
        )
    figure.update_layout(title="Exposed users per variant (cumulative)")
    return f"<section><h2>Exposure</h2>{figure_div(figure, 'exposure')}</section>"
