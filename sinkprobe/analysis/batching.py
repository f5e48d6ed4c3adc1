"""Token-id lists to padded batches, and padded activations back to one layout.

Every reducer in the analysis sees activations in *content-first* layout: sample b's real
tokens at positions ``0..length_b-1`` and padding after them, whatever side the batch was
padded on. Results are then indexed by a token's position in its own sequence, so they
cannot depend on padding side or on the other samples of the batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

PADDING_SIDES = ("right", "left")


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[Tensor, Tensor]:
    """Token-id lists -> ``ids [batch pos]`` and ``mask [batch pos]`` (1 = real token)."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side {side!r} is not one of {PADDING_SIDES}")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("an empty token sequence cannot be analysed: drop it or give it at least a BOS token")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[b, span] = torch.as_tensor(list(s), dtype=torch.long)
        mask[b, span] = 1
    return ids, mask


def content_offsets(mask: Tensor) -> Tensor:
    """``[batch pos] -> [batch]``: index of each row's first real token (0 for right padding)."""
    return mask.long().argmax(dim=1)


def content_first(x: Tensor, offsets: Tensor, dims: Sequence[int]) -> Tensor:
    """Roll each sample (dim 0) left by its offset along ``dims`` so its content starts at 0."""
    if not bool(offsets.any()):
        return x
    for d in dims:
        width = x.shape[d]
        idx = (torch.arange(width, device=x.device) + offsets.to(x.device)[:, None]) % width  # [batch width]
        shape = [1] * x.ndim
        shape[0], shape[d] = x.shape[0], width
        x = x.gather(d, idx.view(shape).expand(x.shape))
    return x


def nan_padded(rows: Sequence[Tensor], width: int | None = None) -> Tensor:
    """Stack ``[len_i, ...]`` tensors into ``[n width ...]`` float32, NaN past each row's end."""
    width = max(r.shape[0] for r in rows) if width is None else width
    out = torch.full((len(rows), width, *rows[0].shape[1:]), float("nan"))
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r[:width].float()
    return out
