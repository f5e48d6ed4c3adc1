"""Per-position logits of the true next token (paper Fig. 4)."""

from __future__ import annotations

from typing import Mapping

import pandas as pd
import torch
from torch import Tensor


def true_token_scores(logits: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Logit and log-prob of the true next token, content-first layout.

    ``logits [batch pos vocab]``, ``ids``/``mask [batch pos]`` -> two ``[batch pos-1]`` float32
    tensors; entry t scores token t+1 given tokens ≤ t, NaN where token t+1 is padding.
    """
    target = ids[:, 1:, None]
    lg = logits[:, :-1].float()
    logit = lg.gather(-1, target).squeeze(-1)
    logprob = logit - torch.logsumexp(lg, dim=-1)
    pad = ~mask[:, 1:].bool()
    return logit.masked_fill(pad, float("nan")), logprob.masked_fill(pad, float("nan"))


def position_stats(scores: Mapping[str, tuple[Tensor, Tensor]]) -> pd.DataFrame:
    """Tidy per-position table from ``{dataset: (logit [n pos], logprob [n pos])}`` (NaN = absent).

    Columns: dataset, position (of the predicted token's context end), n, logit_mean, logit_std,
    logprob_mean, logprob_std. Std is over samples (ddof 0), NaN-aware.
    """
    frames = []
    for dataset, (logit, logprob) in scores.items():
        n = (~logit.isnan()).sum(0)
        keep = n > 0
        row = {"dataset": dataset, "position": torch.arange(logit.shape[1])[keep].numpy(), "n": n[keep].numpy()}
        for name, x in (("logit", logit), ("logprob", logprob)):
            mean = x.nanmean(0)
            std = ((x - mean).pow(2).nanmean(0)).sqrt()
            row[f"{name}_mean"], row[f"{name}_std"] = mean[keep].numpy(), std[keep].numpy()
        frames.append(pd.DataFrame(row))
    return pd.concat(frames, ignore_index=True)
