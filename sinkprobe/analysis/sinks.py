"""Attention-sink detection (Gu et al. 2024, "When attention sink emerges").

α_h^l(k) = mean over (non-pad) queries i ≥ k of A^l_h[i, k]; key k is a sink of head (l, h)
when α > ε. The sink rate of (layer, key) is the share of that layer's heads for which k is
a sink, averaged over the samples long enough to have key k. S = the keys whose rate passes
a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from sinkprobe.analysis.accumulate import MeanAccumulator
from sinkprobe.analysis.capture import check_layer, run_batches
from sinkprobe.models.hooked import pattern_hook

DEFAULT_EPS = 0.3


def sink_scores(pattern: Tensor, mask: Tensor) -> Tensor:
    """``pattern [batch head query key]``, ``mask [batch pos]`` (content-first) -> α ``[batch head key]``,
    NaN for keys past the sample's end."""
    n = pattern.shape[-1]
    q = torch.arange(n, device=pattern.device)
    lower = q[:, None] >= q[None, :]  # [query key]: i ≥ k
    valid_q = mask.bool()[:, None, :, None]  # [batch 1 query 1]
    sel = lower[None, None] & valid_q
    total = torch.where(sel, pattern.float(), 0.0).sum(-2)  # [batch head key]
    count = sel.sum(-2)  # [batch 1 key]
    return (total / count).masked_fill(~mask.bool()[:, None, :], float("nan"))


def head_sink_share(alpha: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``α [... head key] -> [... key]``: share of heads whose α exceeds ε (NaN where α is NaN)."""
    share = (alpha > eps).float().mean(-2)
    return share.masked_fill(alpha.isnan().any(-2), float("nan"))


def sink_set(rate: Tensor, threshold: float, layers: Sequence[int] | None = None) -> list[int]:
    """Keys whose sink rate (``rate [layer key]``, averaged over ``layers``, default all) ≥ threshold."""
    r = rate if layers is None else rate[list(layers)]
    return [int(k) for k in torch.nonzero(r.nanmean(0) >= threshold).flatten()]


@dataclass
class SinkReport:
    """Sink scores of one model on one data set."""

    alpha: Tensor  # [layer head key] α averaged over samples
    rate: Tensor  # [layer key] sink rate averaged over samples
    n_samples: Tensor  # [key] samples that have this key
    layers: list[int]
    eps: float
    model: str = ""

    def positions(self, threshold: float = 0.5, layers: Sequence[int] | None = None) -> list[int]:
        """The sink set S: keys whose rate ≥ ``threshold`` (layer indices as in ``self.layers``)."""
        rows = None if layers is None else [self.layers.index(l) for l in layers]
        return sink_set(self.rate, threshold, rows)

    def first_token(self) -> dict:
        """The run card's view of key 0: α(0) per layer (head mean) and per ``[layer][head]``, and
        the sink rate per layer, rounded to 4 places for JSON."""
        alpha0 = self.alpha[:, :, 0]  # [layer head]
        return {
            "sink_eps": self.eps,
            "sink_score_per_layer": [round(float(a), 4) for a in alpha0.mean(-1)],
            "sink_score_per_head": [[round(float(a), 4) for a in row] for row in alpha0],
            "sink_rate_per_layer": [round(float(r), 4) for r in self.rate[:, 0]],
        }

    def rate_table(self) -> pd.DataFrame:
        """Tidy: model, layer, key, sink_rate, n_samples."""
        L, K = self.rate.shape
        return pd.DataFrame(
            {
                "model": self.model,
                "layer": torch.tensor(self.layers).repeat_interleave(K).numpy(),
                "key": torch.arange(K).repeat(L).numpy(),
                "sink_rate": self.rate.flatten().numpy(),
                "n_samples": self.n_samples.repeat(L).numpy(),
            }
        )

    def score_table(self) -> pd.DataFrame:
        """Tidy: model, layer, head, key, alpha."""
        L, H, K = self.alpha.shape
        return pd.DataFrame(
            {
                "model": self.model,
                "layer": torch.tensor(self.layers).repeat_interleave(H * K).numpy(),
                "head": torch.arange(H).repeat_interleave(K).repeat(L).numpy(),
                "key": torch.arange(K).repeat(L * H).numpy(),
                "alpha": self.alpha.flatten().numpy(),
            }
        )


def detect_sinks(
    bridge: TransformerBridge,
    seqs: Sequence[Sequence[int]],
    layers: Sequence[int] | None = None,
    *,
    eps: float = DEFAULT_EPS,
    max_key: int | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    model: str = "",
) -> SinkReport:
    """Sink scores at ``layers`` (default: all) over ``seqs``, keys ``0..max_key-1`` (default: all)."""
    layers = list(range(bridge.cfg.n_layers)) if layers is None else [check_layer(bridge, l) for l in layers]
    width = max_key or max(len(s) for s in seqs)
    alpha_acc, rate_acc = MeanAccumulator(), MeanAccumulator()

    def widen(x: Tensor) -> Tensor:  # [..., key] -> [..., width], NaN-filled
        out = x.new_full((*x.shape[:-1], width), float("nan"))
        k = min(width, x.shape[-1])
        out[..., :k] = x[..., :k]
        return out

    for run in run_batches(
        bridge, seqs, {pattern_hook(l): sink_scores for l in layers}, batch_size=batch_size, padding_side=padding_side
    ):
        alpha = widen(torch.stack([run.acts[pattern_hook(l)] for l in layers], dim=1))  # [batch layer head key]
        share = head_sink_share(alpha, eps)  # [batch layer key]
        alpha_acc.add(alpha, ~alpha.isnan())
        rate_acc.add(share, ~share.isnan())
    return SinkReport(
        alpha=alpha_acc.mean(),
        rate=rate_acc.mean(),
        n_samples=rate_acc.count[0],
        layers=layers,
        eps=eps,
        model=model,
    )


def sink_rate_at(
    bridge: TransformerBridge,
    seqs: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int] | None = None,
    *,
    eps: float = DEFAULT_EPS,
    batch_size: int = 16,
) -> Tensor:
    """``[n]``: per sample, the sink rate of its keys ``positions[i]`` (e.g. where a trigger sits):
    the share of heads with α > ε, averaged over ``layers`` (default: all) and then over those
    keys; NaN for a sample with no position. The rate :func:`detect_sinks` gives a fixed key,
    at keys that move from sample to sample."""
    layers = list(range(bridge.cfg.n_layers)) if layers is None else [check_layer(bridge, l) for l in layers]
    out = torch.full((len(seqs),), float("nan"))
    for run in run_batches(bridge, seqs, {pattern_hook(l): sink_scores for l in layers}, batch_size=batch_size):
        alpha = torch.stack([run.acts[pattern_hook(l)] for l in layers], dim=1)  # [batch layer head key]
        rate = head_sink_share(alpha, eps).mean(1)  # [batch key]
        for j, i in enumerate(run.samples):
            if positions[i]:
                out[i] = rate[j, list(positions[i])].mean()
    return out
