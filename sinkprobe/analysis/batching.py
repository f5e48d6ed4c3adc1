"""Padded activations back to one layout (batches are padded by :func:`sinkprobe.data.batching.pad_batch`).

Every reducer in the analysis sees activations in *content-first* layout: sample b's real
tokens at positions ``0..length_b-1`` and padding after them, whatever side the batch was
padded on. Results are then indexed by a token's position in its own sequence, so they
cannot depend on padding side or on the other samples of the batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


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
