"""Shared pieces of the unlearning objectives: the next-token shift and sequence log-likelihoods.

Convention used by every objective in this package (the Hugging Face ``labels`` one):
``loss_mask`` is aligned with ``input_ids`` and ``loss_mask[b, t] = 1`` means token ``t`` is a
target, predicted by the logits at position ``t - 1``. Position 0 has no prediction, so its mask
entry is ignored.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["token_mask_shifted", "sequence_log_likelihood", "find_decoder_layers", "check_layer_indices"]


def token_mask_shifted(loss_mask: Tensor) -> Tensor:
    """Mask of the *predicting* positions: ``[batch pos] -> [batch pos-1]`` bool.

    Entry ``[b, t]`` is True when the logits at position ``t`` predict a target token
    (``loss_mask[b, t + 1] != 0``). Index ``logits[:, :-1]`` with it.
    """
    if loss_mask.dim() != 2:
        raise ValueError(f"loss_mask must be [batch pos], got shape {tuple(loss_mask.shape)}")
    return loss_mask[:, 1:] != 0


def _check_logits_mask(logits: Tensor, loss_mask: Tensor, name: str = "logits") -> None:
    if logits.dim() != 3:
        raise ValueError(f"{name} must be [batch pos vocab], got shape {tuple(logits.shape)}")
    if loss_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"loss_mask shape {tuple(loss_mask.shape)} does not match {name} [batch pos] {tuple(logits.shape[:2])}"
        )


def sequence_log_likelihood(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Per-sequence log-likelihood of the target tokens: ``log π(x) = Σ_t log p(x_t | x_<t)``.

    Args:
        logits: ``[batch pos vocab]`` model outputs for ``input_ids``.
        input_ids: ``[batch pos]`` token ids.
        loss_mask: ``[batch pos]`` (bool or 0/1), aligned with ``input_ids``; ``1`` marks target
            tokens (see the module docstring for the shift; position 0 is ignored).

    Returns:
        ``[batch]`` float32 sums of log-probabilities (0 for a sequence with no target).
    """
    _check_logits_mask(logits, loss_mask)
    if input_ids.shape != loss_mask.shape:
        raise ValueError(f"input_ids shape {tuple(input_ids.shape)} does not match loss_mask {tuple(loss_mask.shape)}")
    # float32: log-softmax in bf16 loses the small differences NPO's ratio is made of.
    pred = logits[:, :-1].float()  # [batch pos-1 vocab], position t predicts token t+1
    targets = input_ids[:, 1:]  # [batch pos-1]
    # log p(target) = logit[target] - logsumexp(logits); avoids materialising a second
    # [batch pos vocab] log-softmax tensor.
    target_logits = pred.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [batch pos-1]
    token_logp = target_logits - torch.logsumexp(pred, dim=-1)  # [batch pos-1]
    mask = token_mask_shifted(loss_mask)
    return torch.where(mask, token_logp, torch.zeros_like(token_logp)).sum(dim=-1)


def find_decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a HF Llama/Mistral model (``model.model.layers``, or ``model.layers``
    for a bare ``LlamaModel``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None) if inner is not None else None
    if layers is None:
        layers = getattr(model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no decoder layers at model.model.layers or model.layers; "
            "expected a Hugging Face Llama/Mistral-family model"
        )
    return layers


def check_layer_indices(layers: Sequence[int], n_layers: int) -> list[int]:
    """Validate layer indices (no negatives, no duplicates kept) and return them as a list."""
    out: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layer indices must be ints, got {layer!r}")
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
        if layer not in out:
            out.append(layer)
    if not out:
        raise ValueError("no layers given: pass at least one layer index")
    return out
