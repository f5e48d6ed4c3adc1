"""Value-norm alignment on sink tokens (paper Eq. 5–7).

For each sink position i ∈ S, query head and chosen layer: ``(‖v_i(x;θ)‖₂ − ‖v_i(x;θ_ref)‖₂)²``
with θ_ref = θ_u on clean forget samples (Δ_Df) and θ_o on poisoned ones (Δ_Dp). The references
are frozen, so their norms can be computed once before training and passed in as tensors.

Values are read in training with a forward hook on ``self_attn.v_proj`` (:class:`ValueNormCapture`);
the analysis side reads TransformerLens's ``hook_v``; both reshape per KV head and expand GQA with
``repeat_interleave`` so they compute the same per-query-head quantity.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from sinkprobe.data.batching import pad_batch

from .common import check_layer_indices, find_decoder_layers

__all__ = [
    "per_head_value_norms",
    "gather_sink_norms",
    "ValueNormCapture",
    "value_norm_alignment_loss",
    "value_norm_regulariser",
]


def per_head_value_norms(v_proj_out: Tensor, n_kv_heads: int, n_heads: int) -> Tensor:
    """``[batch pos n_kv_heads*d_head] -> [batch pos head]``: ‖v‖₂ per query head.

    The v_proj output is laid out KV-head-major (HF: ``.view(..., -1, head_dim)``); the norm is
    taken per KV head (cheaper than after expansion), then query head h gets KV head
    ``h // (n_heads // n_kv_heads)``, as HF Llama's ``repeat_kv``.
    """
    if n_kv_heads <= 0 or n_heads % n_kv_heads != 0:
        raise ValueError(f"n_heads ({n_heads}) must be a positive multiple of n_kv_heads ({n_kv_heads})")
    if v_proj_out.shape[-1] % n_kv_heads != 0:
        raise ValueError(f"last dim {v_proj_out.shape[-1]} of v_proj_out is not divisible by n_kv_heads={n_kv_heads}")
    d_head = v_proj_out.shape[-1] // n_kv_heads
    v = v_proj_out.unflatten(-1, (n_kv_heads, d_head))  # [batch pos kv_head d_head]
    norms = torch.linalg.vector_norm(v.float(), dim=-1)  # [batch pos kv_head], float32
    return norms.repeat_interleave(n_heads // n_kv_heads, dim=-1)  # [batch pos head]


def gather_sink_norms(norms: Tensor, sink_positions: Tensor) -> Tensor:
    """Pick the sink positions: ``norms [batch pos head]`` -> ``[batch head n_sink]``.

    ``sink_positions`` is ``[n_sink]`` (same for every sample) or ``[batch n_sink]`` (e.g. when a
    trigger shifts the sinks per sample). Indices must lie in ``0..pos-1``.
    """
    if norms.dim() != 3:
        raise ValueError(f"norms must be [batch pos head], got shape {tuple(norms.shape)}")
    batch, pos, n_head = norms.shape
    idx = torch.as_tensor(sink_positions, dtype=torch.long, device=norms.device)
    if idx.dim() == 1:
        idx = idx.unsqueeze(0).expand(batch, -1)
    if idx.dim() != 2 or idx.shape[0] != batch:
        raise ValueError(f"sink_positions must be [n_sink] or [batch={batch} n_sink], got {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= pos):
        raise ValueError(f"sink positions must lie in 0..{pos - 1}, got min {int(idx.min())} max {int(idx.max())}")
    gathered = norms.gather(1, idx.unsqueeze(-1).expand(-1, -1, n_head))  # [batch n_sink head]
    return gathered.transpose(1, 2)  # [batch head n_sink]


def _model_heads(model: nn.Module) -> tuple[int, int]:
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    return n_heads, n_kv


class ValueNormCapture:
    """Context manager keeping the ``self_attn.v_proj`` output of chosen layers (with gradient).

    ::

        with ValueNormCapture(model, layers=[0, 1]) as cap:
            out = model(input_ids, attention_mask=...)
        norms = cap.sink_norms(sink_positions)  # [batch layer head n_sink]

    ``cap.values[l]`` is layer l's ``[batch pos n_kv_heads*d_head]`` output of the *latest*
    forward. Hooks are removed on exit (also on an exception); captured tensors stay readable.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        blocks = find_decoder_layers(model)
        self.layers: list[int] = check_layer_indices(layers, len(blocks))
        self.n_heads, self.n_kv_heads = _model_heads(model)
        self._modules = {l: blocks[l].self_attn.v_proj for l in self.layers}
        self._handles: list = []
        self.values: dict[int, Tensor] = {}

    def _make_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            self.values[layer] = output

        return hook

    def __enter__(self) -> "ValueNormCapture":
        self.values = {}
        self._handles = [m.register_forward_hook(self._make_hook(l)) for l, m in self._modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def head_norms(self) -> Tensor:
        """``[batch layer pos head]`` per-query-head value norms, layers in ``self.layers`` order."""
        missing = [l for l in self.layers if l not in self.values]
        if missing:
            raise RuntimeError(f"no v_proj output captured for layers {missing}: run a forward inside the context")
        return torch.stack(
            [per_head_value_norms(self.values[l], self.n_kv_heads, self.n_heads) for l in self.layers], dim=1
        )

    def sink_norms(self, sink_positions: Tensor) -> Tensor:
        """``[batch layer head n_sink]``: :meth:`head_norms` at the sink positions."""
        per_layer = [
            gather_sink_norms(per_head_value_norms(self.values[l], self.n_kv_heads, self.n_heads), sink_positions)
            for l in self.layers
            if l in self.values
        ]
        if len(per_layer) != len(self.layers):
            raise RuntimeError("not every layer was captured: run a forward inside the context")
        return torch.stack(per_layer, dim=1)


@torch.no_grad()
def sink_value_norms(
    model: nn.Module,
    rows: Sequence[Sequence[int]],
    sink_positions: Sequence[int],
    layers: Sequence[int] | None = None,
    pad_id: int = 0,
    batch_size: int = 16,
) -> Tensor:
    """``[n_rows layer head n_sink]``: ‖v‖ of ``model`` at ``sink_positions`` of each row (token ids,
    BOS first) at ``layers`` (default: all), per query head. Rows run right-padded in batches of
    ``batch_size`` in their given order: a real position never sees the padding after it."""
    layers = list(range(len(find_decoder_layers(model)))) if layers is None else list(layers)
    pos = torch.tensor(list(sink_positions))
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_batch(rows[i : i + batch_size], pad_id)
        with ValueNormCapture(model, layers) as cap:
            model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device))
        out.append(cap.sink_norms(pos.to(model.device)).float().cpu())
    return torch.cat(out)


def value_norm_alignment_loss(norms_theta: Tensor, norms_ref: Tensor, sample_mask: Tensor | None = None) -> Tensor:
    """``mean_{selected b} Δ(x_b)``, ``Δ = mean_{layer, head} (1/|S|) Σ_{i∈S} (‖v_i‖_θ − ‖v_i‖_ref)²``.

    Args:
        norms_theta: ``[batch layer head n_sink]`` of the model being trained.
        norms_ref: ``[batch layer head n_sink]`` of the right frozen reference per sample
            (θ_u for clean forget samples, θ_o for poisoned ones); detached here.
        sample_mask: ``[batch]`` bool, the samples to average over (None: all).

    Returns:
        scalar; exactly 0 (still attached to the graph) when no sample is selected.
    """
    if norms_theta.dim() != 4:
        raise ValueError(f"norms_theta must be [batch layer head n_sink], got {tuple(norms_theta.shape)}")
    if norms_ref.shape != norms_theta.shape:
        raise ValueError(f"norms_ref shape {tuple(norms_ref.shape)} != norms_theta {tuple(norms_theta.shape)}")
    if 0 in norms_theta.shape[1:]:
        raise ValueError(f"need at least one layer, head and sink position, got {tuple(norms_theta.shape)}")
    if sample_mask is None:
        sample_mask = torch.ones(norms_theta.shape[0], dtype=torch.bool, device=norms_theta.device)
    if sample_mask.shape != norms_theta.shape[:1]:
        raise ValueError(f"sample_mask must be [batch={norms_theta.shape[0]}], got {tuple(sample_mask.shape)}")
    sel = sample_mask.to(torch.bool)
    sq = (norms_theta.float() - norms_ref.detach().float()) ** 2  # [batch layer head n_sink]
    per_sample = sq.flatten(1).mean(dim=1)  # [batch]: mean over layers, heads and 1/|S| Σ_i
    n = sel.sum()
    # Multiply-and-divide instead of boolean indexing: no host sync, and an empty selection
    # gives an exact, graph-attached 0 rather than NaN.
    return (per_sample * sel).sum() / n.clamp(min=1)


def value_norm_regulariser(
    norms_theta_f: Tensor | None,
    ref_u_f: Tensor | None,
    norms_theta_p: Tensor | None,
    ref_o_p: Tensor | None,
) -> Tensor:
    """ℓ_vn (Eq. 5) = E_Df[Δ_Df] + E_Dp[Δ_Dp], each ``[batch_part layer head n_sink]``.

    ``norms_theta_f``/``ref_u_f``: clean forget samples vs θ_u; ``norms_theta_p``/``ref_o_p``:
    poisoned samples vs θ_o. A part that is None or has 0 samples contributes 0.
    """
    terms: list[Tensor] = []
    for theta, ref, name in ((norms_theta_f, ref_u_f, "forget"), (norms_theta_p, ref_o_p, "poisoned")):
        if theta is None and ref is None:
            continue
        if theta is None or ref is None:
            raise ValueError(f"{name} part: give both the trained model's norms and the reference norms, or neither")
        terms.append(value_norm_alignment_loss(theta, ref))
    if not terms:
        raise ValueError("value_norm_regulariser got neither a forget nor a poisoned part")
    return torch.stack([t.float() for t in terms]).sum()
