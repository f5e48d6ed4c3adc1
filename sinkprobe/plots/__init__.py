"""Plotly figure builders in the paper's style. They take saved results / DataFrames, never models."""

from sinkprobe.plots.figures import (
    delta_attention_heatmap,
    norm_correlation_bars,
    position_logits_figure,
    sink_rate_heatmap,
    trio_heatmaps,
    ue_be_plane,
)

__all__ = [
    "delta_attention_heatmap",
    "norm_correlation_bars",
    "position_logits_figure",
    "sink_rate_heatmap",
    "trio_heatmaps",
    "ue_be_plane",
]
