"""Representation Misdirection for Unlearning (Li et al. 2024; paper Eq. A4, A5).

Follows the WMDP reference code (``rmu/unlearn.py``): a fixed control vector ``c·u`` with
``u ~ U[0,1)^d / ‖·‖``, ``F.mse_loss`` of the steering layer's output to it on D_f and to θ_o's
activations on D_r ∪ D_p, and only ``mlp.down_proj.weight`` of layers 5–7 trained (the code's
``param_ids=[6]`` is the 7th parameter of a Llama/Mistral block, ``mlp.down_proj.weight``).

Eq. A4 writes the squared L2 norm ``‖M_θ(x) − c·u‖²``; like the code we take the *mean* over
tokens and hidden dimensions (= squared norm / d_model per token), so ``steering_coeff`` and the
retain weight keep the meaning they have in the published configs. Unlike the code, padding and
non-target tokens are masked out.

M_θ(x) is the output of decoder layer ``steering_layer`` (``model.model.layers[l]``'s output),
which :class:`LayerOutputCapture` reads. It equals ``output_hidden_states[l + 1]`` except for
the last layer, whose entry in ``hidden_states`` has the final norm applied.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .common import check_layer_indices, find_decoder_layers

__all__ = [
    "rmu_control_vector",
    "rmu_forget_loss",
    "rmu_representation_retain_loss",
    "select_rmu_parameters",
    "default_rmu_layers",
    "LayerOutputCapture",
]


def rmu_control_vector(
    d_model: int,
    steering_coeff: float,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``c · u / ‖u‖`` with ``u ~ U[0,1)^d_model``: ``[d_model]``, norm = ``steering_coeff``.

    Drawn on the CPU from ``generator`` (so a seeded generator gives the same vector on any
    device), then moved to ``device``/``dtype``. Paper: c = 12 (MUSE), 85 (WMDP).
    """
    if d_model <= 0:
        raise ValueError(f"d_model must be positive, got {d_model}")
    u = torch.rand(d_model, generator=generator, dtype=torch.float32)
    return (u / torch.linalg.vector_norm(u) * steering_coeff).to(device=device, dtype=dtype)


def _masked_mse(hidden: Tensor, target: Tensor, mask: Tensor, what: str) -> Tensor:
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [batch pos d_model], got shape {tuple(hidden.shape)}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden [batch pos] {tuple(hidden.shape[:2])}")
    sel = mask != 0
    if not bool(sel.any()):
        raise ValueError(f"{what}: mask selects no token")
    h = hidden[sel].float()  # [n_tok d_model]
    t = target[sel].float() if target.dim() == 3 else target.float()  # [n_tok d] or [d]
    # Mean over tokens and d_model, as F.mse_loss in the RMU code.
    return ((h - t) ** 2).mean()


def rmu_forget_loss(hidden: Tensor, control: Tensor, mask: Tensor) -> Tensor:
    """RMU forget loss (Eq. A4, code convention): ``mean_{masked tokens, d} (h − c·u)²``.

    Args:
        hidden: ``[batch pos d_model]`` steering-layer activations of the trained model on D_f.
        control: ``[d_model]`` the fixed control vector ``c·u`` from :func:`rmu_control_vector`.
        mask: ``[batch pos]`` tokens to steer (e.g. the attention mask; no shift here: the
            activation *at* a token is compared, not a prediction of the next one).
    """
    if control.shape != hidden.shape[-1:]:
        raise ValueError(f"control must be [d_model]={hidden.shape[-1]}, got shape {tuple(control.shape)}")
    return _masked_mse(hidden, control.detach(), mask, "rmu_forget_loss")


def rmu_representation_retain_loss(hidden: Tensor, hidden_ref: Tensor, mask: Tensor) -> Tensor:
    """Representation term of Eq. A5: ``mean_{masked tokens, d} (h_θ − h_θo)²``.

    ``hidden_ref`` (``[batch pos d_model]``, frozen θ_o at the same layer) is detached.
    """
    if hidden_ref.shape != hidden.shape:
        raise ValueError(f"hidden_ref shape {tuple(hidden_ref.shape)} != hidden {tuple(hidden.shape)}")
    return _masked_mse(hidden, hidden_ref.detach(), mask, "rmu_representation_retain_loss")


def select_rmu_parameters(
    model: nn.Module,
    layers: Sequence[int],
    param_names: Sequence[str] = ("mlp.down_proj.weight",),
) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` except ``param_names`` in decoder ``layers``.

    Names are relative to a decoder block (``model.model.layers[i]``), e.g.
    ``"mlp.down_proj.weight"``. Returns the selected parameters (layer order, then name order),
    with ``requires_grad=True``; give exactly these to the optimizer.
    """
    blocks = find_decoder_layers(model)
    layer_ids = check_layer_indices(layers, len(blocks))
    if isinstance(param_names, str) or not param_names:
        raise ValueError("param_names must be a non-empty sequence of names, e.g. ('mlp.down_proj.weight',)")
    chosen: list[nn.Parameter] = []
    for i in layer_ids:
        named = dict(blocks[i].named_parameters())
        for name in param_names:
            if name not in named:
                raise ValueError(f"layer {i} has no parameter {name!r}; valid names: {', '.join(sorted(named))}")
            if not any(p is named[name] for p in chosen):
                chosen.append(named[name])
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def default_rmu_layers(n_layers: int) -> tuple[tuple[int, ...], int]:
    """``(trainable_layers, steering_layer)`` scaled from the paper's 32-layer setting.

    Paper/WMDP code on 32 layers: steering layer 7, train layers 5–7. Rule:

    - steering layer ``s = clamp(round(7/32 · n_layers), 2, n_layers − 1)``: the same relative
      depth, but never before layer 2, so a shallow model still has a processed
      representation to misdirect and at least two layers to train;
    - trainable layers: the (up to) three layers ending at ``s``, never layer 0 when ``s ≥ 1``
      (layer 0 is where small models form the attention sink this project studies; the paper's
      window 5–7 never touches the first layers either).

    Examples: 32 → ((5, 6, 7), 7); 16 → ((2, 3, 4), 4); 8 → ((1, 2), 2); 4 → ((1, 2), 2);
    2 → ((1,), 1); 1 → ((0,), 0).
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    scaled = int(7 * n_layers / 32 + 0.5)  # round half up (Python's round() is banker's)
    s = min(max(scaled, 2), n_layers - 1)
    start = max(min(1, s), s - 2)
    return tuple(range(start, s + 1)), s


class LayerOutputCapture:
    """Context manager: keep the output hidden state of decoder layer ``layer`` (with gradient).

    ``with LayerOutputCapture(model, l) as cap: model(...)`` then ``cap.output`` is
    ``[batch pos d_model]`` from the latest forward. The hook is removed on exit.
    """

    def __init__(self, model: nn.Module, layer: int) -> None:
        blocks = find_decoder_layers(model)
        (self.layer,) = check_layer_indices([layer], len(blocks))
        self._module = blocks[self.layer]
        self._handle = None
        self.output: Tensor | None = None

    def _hook(self, module: nn.Module, args: tuple, output) -> None:
        self.output = output[0] if isinstance(output, (tuple, list)) else output

    def __enter__(self) -> "LayerOutputCapture":
        self._handle = self._module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
