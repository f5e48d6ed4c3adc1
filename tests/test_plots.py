"""Plot builders make the expected traces from saved-result shaped inputs (no models)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sinkprobe.analysis import position_stats
from sinkprobe.plots import (
    delta_attention_heatmap,
    norm_correlation_bars,
    position_logits_figure,
    sink_rate_heatmap,
    trio_heatmaps,
    ue_be_plane,
)


def test_delta_attention_heatmap_marks_the_trigger():
    fig = delta_attention_heatmap(torch.randn(6, 6), trigger_positions=[1, 2])
    assert [t.type for t in fig.data] == ["heatmap"] and fig.data[0].zmid == 0
    assert "ΔA" in fig.data[0].hovertemplate and len(fig.layout.shapes) == 4


def test_position_logits_lines_with_std_bands():
    x = torch.randn(5, 8)
    fig = position_logits_figure(position_stats({"forget": (x, x), "poisoned": (x + 1, x + 1)}))
    assert [t.name for t in fig.data] == ["forget ± std", "forget", "poisoned ± std", "poisoned"]
    assert fig.data[0].fill == "toself" and len(fig.data[1].x) == 8


def test_sink_rate_heatmap_is_layer_by_key():
    rates = pd.DataFrame({"layer": [0, 0, 1, 1], "key": [0, 1, 0, 1], "sink_rate": [1.0, 0.2, 0.9, 0.0]})
    fig = sink_rate_heatmap(rates)
    assert fig.data[0].type == "heatmap" and fig.data[0].z.shape == (2, 2)


def test_norm_correlation_bars_carry_ci_error_bars():
    table = pd.DataFrame(
        {
            "comparison": ["a", "b", "c"],
            "position": 0,
            "r": [0.5, 0.8, 0.9],
            "ci_low": [0.4, 0.7, 0.85],
            "ci_high": [0.6, 0.9, 0.95],
        }
    )
    fig = norm_correlation_bars(table)
    assert [t.type for t in fig.data] == ["bar"]
    assert list(fig.data[0].error_y.arrayminus) == pytest.approx([0.1, 0.1, 0.05])


def test_ue_be_plane_splits_at_the_reference_models():
    table = pd.DataFrame(
        {
            "model": ["original", "unlearned", "prefix"],
            "ue_knowmem": [60.0, 10.0, 15.0],
            "be_knowmem": [60.0, 12.0, 55.0],
        }
    )
    fig = ue_be_plane(table)
    assert [t.type for t in fig.data] == ["scatter"] and list(fig.data[0].text) == list(table["model"])
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert {lines[0].x0, lines[1].y0} == {10.0, 60.0}
    with pytest.raises(ValueError, match="unlearned"):
        ue_be_plane(table.iloc[[0, 2]])


def test_trio_heatmaps_put_the_three_models_on_one_colour_scale():
    maps = torch.zeros(3, 4, 4)
    maps[2, 3, 0] = 0.8  # θ_b's largest weight sets the top of the shared scale
    fig = trio_heatmaps(maps, title="layer 29, head 3")
    assert [t.coloraxis for t in fig.data] == ["coloraxis"] * 3
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == pytest.approx(0.8)
    assert [a.text for a in fig.layout.annotations] == ["θ_o", "θ_u", "θ_b"]
    assert np.asarray(fig.data[2].z)[3, 0] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="expected \\[model query key\\] with 3 models"):
        trio_heatmaps(torch.zeros(2, 4, 4))
