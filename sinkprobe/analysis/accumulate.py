"""Streaming means over samples with per-cell counts.

Maps are reduced batch by batch (a 7B model's attention patterns for 256 samples do not fit
in memory at once), and samples have different lengths, so each cell keeps its own count.
"""

from __future__ import annotations

import torch
from torch import Tensor


class MeanAccumulator:
    """Running mean of ``[batch *shape]`` values over the batch dim, only where ``valid``."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count: Tensor | None = None

    def add(self, values: Tensor, valid: Tensor) -> None:
        values = torch.where(valid, values.double(), 0.0).sum(0)
        count = valid.long().sum(0)
        if self.total is None:
            self.total, self.count = values, count
        else:
            self.total += values
            self.count += count

    def mean(self) -> Tensor:
        """float32 mean, NaN where no sample contributed."""
        if self.total is None:
            raise ValueError("nothing was accumulated: give at least one sample")
        return (self.total / self.count).float()
