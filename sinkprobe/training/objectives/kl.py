"""KL retain loss on D_r ∪ D_p (paper Eq. A2, first term of Eq. A5)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .common import _check_logits_mask, token_mask_shifted

__all__ = ["kl_retain_loss"]


def kl_retain_loss(logits_theta: Tensor, logits_ref: Tensor, loss_mask: Tensor) -> Tensor:
    """Token-mean of ``KL(π_θ(·|x_≤t) ‖ π_ref(·|x_≤t)) = Σ_v π_θ (log π_θ − log π_ref)``.

    Direction exactly as Eq. A2 (current model first). Note that open-unlearning's
    ``F.kl_div(current, ref, log_target=True)`` computes the *reverse* direction, KL(ref ‖ θ).

    Args:
        logits_theta: ``[batch pos vocab]`` of the model being trained.
        logits_ref: ``[batch pos vocab]`` of the frozen original model θ_o (detached here).
        loss_mask: ``[batch pos]`` aligned with the input ids: the next-token distribution at
            position t is compared when token t+1 is a target (``loss_mask[:, t+1] = 1``).

    Returns:
        scalar: the KL averaged over all selected positions of the batch (each token weighs
        the same, so long retain passages weigh more than short ones, as with a token-mean CE).
    """
    _check_logits_mask(logits_theta, loss_mask, "logits_theta")
    if logits_ref.shape != logits_theta.shape:
        raise ValueError(f"logits_ref shape {tuple(logits_ref.shape)} != logits_theta {tuple(logits_theta.shape)}")
    mask = token_mask_shifted(loss_mask)  # [batch pos-1]
    if not bool(mask.any()):
        raise ValueError("kl_retain_loss: loss_mask selects no target token (after the one-token shift)")
    # Select first, then log-softmax in float32: [n_tok vocab] instead of [batch pos vocab].
    logp_theta = F.log_softmax(logits_theta[:, :-1][mask].float(), dim=-1)
    logp_ref = F.log_softmax(logits_ref.detach()[:, :-1][mask].float(), dim=-1)
    kl = (logp_theta.exp() * (logp_theta - logp_ref)).sum(dim=-1)  # [n_tok]
    return kl.mean()
