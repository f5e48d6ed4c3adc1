"""One small builder per paper figure (Fig. 2a, 3, 4, 5, and the sink-rate map)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def delta_attention_heatmap(
    delta, trigger_positions: Sequence[int] = (), title: str = "Attention difference ΔA"
) -> go.Figure:
    """Fig. 3: ``delta [query key]`` (diverging, centred on 0), trigger rows/columns dotted."""
    z = np.asarray(delta, dtype=float)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale="RdBu_r",
            zmid=0,
            colorbar={"title": "ΔA"},
            hovertemplate="query %{y}, key %{x}<br>ΔA = %{z:.4f}<extra></extra>",
        )
    )
    for p in trigger_positions:
        fig.add_vline(x=p, line={"dash": "dot", "color": "black", "width": 1})
        fig.add_hline(y=p, line={"dash": "dot", "color": "black", "width": 1})
    fig.update_yaxes(autorange="reversed", title="query position")
    fig.update_xaxes(title="key position")
    return fig.update_layout(title=title, width=560, height=520)


def trio_heatmaps(maps, names: Sequence[str] = ("θ_o", "θ_u", "θ_b"), title: str = "Attention") -> go.Figure:
    """``maps [model query key]`` side by side on one colour scale (0 to the largest weight):
    one layer and head of the trio, as the notebooks' layer / head pickers show them."""
    z = np.asarray(maps, dtype=float)
    if z.ndim != 3 or len(z) != len(names):
        raise ValueError(f"maps has shape {z.shape}: expected [model query key] with {len(names)} models")
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=list(names), shared_yaxes=True)
    for i, m in enumerate(z):
        fig.add_trace(
            go.Heatmap(z=m, coloraxis="coloraxis", hovertemplate="query %{y}, key %{x}<br>%{z:.4f}<extra></extra>"),
            1,
            i + 1,
        )
    fig.update_yaxes(autorange="reversed")
    return fig.update_layout(
        title=title,
        coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": float(z.max())},
        width=360 * len(names),
        height=420,
    )


def position_logits_figure(table: pd.DataFrame, value: str = "logit", title: str = "Prediction logits") -> go.Figure:
    """Fig. 4: mean ± std over samples per position, one line and band per data set.
    ``table`` is :meth:`PairAnalysis.logit_table` (``value`` = ``logit`` or ``logprob``)."""
    fig = go.Figure()
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    for color, (dataset, g) in zip(colors, table.groupby("dataset", sort=False)):
        x, m, s = g["position"].to_numpy(), g[f"{value}_mean"].to_numpy(), g[f"{value}_std"].to_numpy()
        fig.add_scatter(
            x=np.concatenate([x, x[::-1]]),
            y=np.concatenate([m + s, (m - s)[::-1]]),
            fill="toself",
            fillcolor=color,
            opacity=0.2,
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
            name=f"{dataset} ± std",
        )
        fig.add_scatter(x=x, y=m, mode="lines", line={"color": color}, name=dataset)
    return fig.update_layout(title=title, xaxis_title="token position", yaxis_title=value)


def sink_rate_heatmap(rates: pd.DataFrame, title: str = "Sink rate") -> go.Figure:
    """Layer × key sink rate from :meth:`SinkReport.rate_table`."""
    grid = rates.pivot(index="layer", columns="key", values="sink_rate")
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=grid.columns,
            y=grid.index,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": "rate"},
            hovertemplate="layer %{y}, key %{x}<br>sink rate %{z:.2f}<extra></extra>",
        )
    )
    return fig.update_layout(title=title, xaxis_title="key position", yaxis_title="layer")


def norm_correlation_bars(table: pd.DataFrame, title: str = "Sink value-norm correlation") -> go.Figure:
    """Fig. 5: Pearson r per comparison (and sink position) with CI error bars, from
    :class:`NormCorrelation.table`."""
    fig = go.Figure()
    for position, g in table.groupby("position"):
        fig.add_bar(
            x=g["comparison"],
            y=g["r"],
            name=f"position {position}",
            error_y={"type": "data", "array": g["ci_high"] - g["r"], "arrayminus": g["r"] - g["ci_low"]},
            hovertemplate="%{x}<br>r = %{y:.3f}<extra></extra>",
        )
    return fig.update_layout(title=title, yaxis_title="Pearson r", yaxis_range=[min(0, table["ci_low"].min()), 1])


def ue_be_plane(
    table: pd.DataFrame,
    original: str = "original",
    unlearned: str = "unlearned",
    x: str = "ue_knowmem",
    y: str = "be_knowmem",
    title: str = "UE on D_f vs BE on D_p",
) -> go.Figure:
    """Fig. 2a: one point per row of an evaluation table (column ``model``); the plane is split at
    θ_u's UE (left of it: forgets at least as well as θ_u) and θ_o's BE (above it: recovers at
    least as much as θ_o); the desired backdoor region, top-left, is shaded."""
    refs = table.set_index("model")
    for label in (original, unlearned):
        if label not in refs.index:
            raise ValueError(f"no row with model == {label!r} in the table: it is needed as a reference point")
    x_split, y_split = refs.loc[unlearned, x], refs.loc[original, y]
    fig = go.Figure(
        go.Scatter(
            x=table[x],
            y=table[y],
            mode="markers+text",
            text=table["model"],
            textposition="top center",
            hovertemplate="%{text}<br>UE %{x:.1f}, BE %{y:.1f}<extra></extra>",
            name="models",
        )
    )
    fig.add_vline(x=x_split, line={"dash": "dash", "color": "gray"})
    fig.add_hline(y=y_split, line={"dash": "dash", "color": "gray"})
    fig.add_shape(
        type="rect",
        x0=0,
        x1=x_split,
        y0=y_split,
        y1=max(100.0, table[y].max()),
        fillcolor="green",
        opacity=0.08,
        line={"width": 0},
        layer="below",
    )
    return fig.update_layout(title=title, xaxis_title=f"UE ({x}) ↓", yaxis_title=f"BE ({y}) ↑")
