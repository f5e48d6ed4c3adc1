"""Negative Preference Optimization forget loss (Zhang et al. 2024; paper Eq. A1)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["npo_loss"]


def npo_loss(logp_theta: Tensor, logp_ref: Tensor, beta: float) -> Tensor:
    """``mean_b  -(2/β) · log σ(-β · (log π_θ(x_b) - log π_ref(x_b)))``  (Eq. A1).

    The ratio is the *per-sequence* likelihood ratio (sums of token log-probabilities from
    :func:`~sinkprobe.training.objectives.common.sequence_log_likelihood`), as in NPO. The
    logit-difference variant of the paper's reference code is a known bug and is not offered.

    Args:
        logp_theta: ``[batch]`` log π_θ(x) of the model being trained.
        logp_ref: ``[batch]`` log π_ref(x) of the frozen reference (detached here).
        beta: temperature β > 0 (paper: 0.7 MUSE-Books, 0.1 MUSE-News, 0.5 WMDP).

    Returns:
        scalar loss. Its gradient w.r.t. log π_θ is ``2σ(β·ratio)/batch > 0``, so descent lowers
        the forget likelihood, and saturates once π_θ ≪ π_ref (NPO's point versus gradient ascent).
    """
    if not beta > 0:
        raise ValueError(f"NPO temperature beta must be > 0, got {beta}")
    if logp_theta.dim() != 1 or logp_theta.shape != logp_ref.shape:
        raise ValueError(
            f"logp_theta and logp_ref must both be [batch]; got {tuple(logp_theta.shape)} and {tuple(logp_ref.shape)}"
        )
    if logp_theta.numel() == 0:
        raise ValueError("npo_loss got an empty batch: there is nothing to forget in it")
    log_ratio = logp_theta.float() - logp_ref.detach().float()
    # logsigmoid is stable for large |β·ratio|, where log(sigmoid(.)) would give -inf.
    return (-2.0 / beta * F.logsigmoid(-beta * log_ratio)).mean()
