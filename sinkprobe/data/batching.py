"""Padding, in one place: token-id lists to ``[batch pos]`` tensors, and per-row vectors to
``[batch pos d]``. Training, evaluation, analysis and the scanner all pad through here.

Training and scoring pad on the right: a causal model never lets a real token see the padding
after it, so every real position computes what it would alone (the analysis may pad on the
left, and maps activations back to one layout, :mod:`sinkprobe.analysis.batching`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

PADDING_SIDES = ("right", "left")


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[Tensor, Tensor]:
    """Token-id lists -> ``ids [batch pos]`` and ``mask [batch pos]`` (1 = real token), int64."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side {side!r} is not one of {PADDING_SIDES}")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("an empty token sequence cannot be batched: drop it or give it at least a BOS token")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[b, span] = torch.as_tensor(list(s), dtype=torch.long)
        mask[b, span] = 1
    return ids, mask


def pad_vectors(rows: Sequence[Tensor], width: int) -> Tensor:
    """Per-row ``[pos_b d]`` tensors -> ``[batch width d]``, zeros after each row (right padding)."""
    out = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
    for j, r in enumerate(rows):
        out[j, : len(r)] = r
    return out
