"""Attention patterns and the attention-difference map ΔA = A(x′) − A(x) (paper Fig. 3).

Pure functions over content-first tensors (see :mod:`sinkprobe.analysis.batching`), plus
:func:`attention_patterns`, a runner for looking at patterns directly. The poisoned-vs-clean
study that streams these over a data set is :mod:`sinkprobe.analysis.pairs`.

Two alignments of a poisoned map P (length Lp) with its clean map C (length Lc = Lp − n_trig):

- *raw*: cell (i, j) of P minus cell (i, j) of C, both cropped to a common size — what the
  paper plots; with a prefix trigger every content token after it is shifted by n_trig.
- *content*: rows and columns of the trigger tokens removed from P, so cell (a, b) compares the
  same pair of content tokens in both; the trigger's own columns (attention onto it) and rows
  (its attention onto the content) are reported separately.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from sinkprobe.analysis.capture import check_layer, run_batches
from sinkprobe.models.hooked import pattern_hook


def head_mean(pattern: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[batch head query key] -> [batch query key]`` (``mask`` unused; reducer signature)."""
    return pattern.float().mean(dim=1)


def every_head(pattern: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[batch head query key]`` as float (the reducer that keeps every head)."""
    return pattern.float()


def square_valid(lengths: Tensor, size: int) -> Tensor:
    """``[batch] -> [batch size size]`` bool: query and key both inside the sample."""
    inside = torch.arange(size)[None, :] < lengths[:, None]  # [batch size]
    return inside[:, :, None] & inside[:, None, :]


def crop(maps: Tensor, size: int) -> Tensor:
    """``[... q k] -> [... size size]`` (e.g. ``[batch q k]``, ``[batch head q k]``), cut or
    zero-padded at the end."""
    out = maps.new_zeros(*maps.shape[:-2], size, size)
    s = min(size, maps.shape[-1])
    out[..., :s, :s] = maps[..., :s, :s]
    return out


def content_index(trigger_positions: Sequence[Sequence[int]], poisoned_lengths: Tensor, size: int) -> Tensor:
    """``[batch size]``: poisoned-copy position of each content token (trigger skipped), 0-padded."""
    idx = torch.zeros(len(trigger_positions), size, dtype=torch.long)
    for b, trig in enumerate(trigger_positions):
        trig_set = set(trig)
        keep = [p for p in range(int(poisoned_lengths[b])) if p not in trig_set][:size]
        idx[b, : len(keep)] = torch.as_tensor(keep, dtype=torch.long)
    return idx


def gather_square(maps: Tensor, idx: Tensor) -> Tensor:
    """``maps [batch q k]``, ``idx [batch s]`` -> ``[batch s s]`` with rows and columns picked by idx."""
    rows = maps.gather(1, idx[:, :, None].expand(-1, -1, maps.shape[2]))
    return rows.gather(2, idx[:, None, :].expand(-1, idx.shape[1], -1))


def key_mask(positions: Sequence[Sequence[int]], width: int) -> Tensor:
    """``[batch width]`` bool, True at each sample's listed positions (those < width)."""
    out = torch.zeros(len(positions), width, dtype=torch.bool)
    for b, pos in enumerate(positions):
        pos = [p for p in pos if p < width]
        out[b, pos] = True
    return out


def mass_on_keys(maps: Tensor, keys: Tensor) -> Tensor:
    """``maps [batch q k]``, ``keys [batch k]`` bool -> ``[batch q]``: attention each query puts on them."""
    return (maps * keys[:, None, :]).sum(-1)


def mean_after(values: Tensor, first: Tensor, lengths: Tensor) -> Tensor:
    """``values [batch q]`` -> ``[batch]``: mean over queries ``first ≤ q < length`` (NaN if none)."""
    q = torch.arange(values.shape[1])[None, :]
    sel = (q >= first[:, None]) & (q < lengths[:, None])
    return torch.where(sel, values.double(), 0.0).sum(1).div(sel.sum(1)).float()


def attention_patterns(
    bridge: TransformerBridge,
    seqs: Sequence[Sequence[int]],
    layers: int | Sequence[int],
    *,
    per_head: bool = False,
    batch_size: int = 16,
    padding_side: str = "right",
) -> list[Tensor]:
    """Per sample, ``[layer head query key]`` (or ``[layer query key]`` head-averaged), cropped to
    the sample's length. Only the pattern hooks are read and the forward stops after the last layer."""
    layers = [check_layer(bridge, l) for l in ([layers] if isinstance(layers, int) else layers)]
    reduce = every_head if per_head else head_mean
    out: list[Tensor] = []
    for run in run_batches(
        bridge, seqs, {pattern_hook(l): reduce for l in layers}, batch_size=batch_size, padding_side=padding_side
    ):
        stacked = torch.stack([run.acts[pattern_hook(l)] for l in layers], dim=1)
        out += [s[..., :n, :n] for s, n in zip(stacked, run.lengths.tolist())]
    return out
