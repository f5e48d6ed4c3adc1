"""Sink value clamping: hold ‖v‖ at the sink positions inside a clean model's range.

A backdoor trained with value-norm alignment (Eq. 5–7) moves the value norms at the sink
only when the trigger is present; clamping them, per layer and KV head, to the range a
reference model (θ_o or θ_u) shows on clean prompts takes that lever away at inference.
The clamp acts on ``self_attn.v_proj``'s output of every decoder layer, at the first ``S``
real tokens of each row (after any left padding), and only in the forward that holds them
(the prompt's, not the later decoding steps).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from sinkprobe.training.objectives.common import find_decoder_layers
from sinkprobe.training.objectives.value_norm import sink_value_norms


def clamp_norms(v: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``v [... d_head]`` rescaled so that each vector's norm lies in ``[low, high]`` (``[...]``,
    broadcast); directions are kept, a zero vector stays zero."""
    norm = torch.linalg.vector_norm(v.float(), dim=-1, keepdim=True)
    target = torch.minimum(torch.maximum(norm, low.unsqueeze(-1)), high.unsqueeze(-1))
    scale = torch.where(norm > 0, target / norm.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(norm))
    return (v.float() * scale).to(v.dtype)


@torch.no_grad()
def sink_value_range(
    model: nn.Module, rows: Sequence[Sequence[int]], sink_positions: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """``(low, high)``, each ``[layer kv_head n_sink]``: the smallest and largest value norm of
    ``model`` at the sink positions over ``rows`` (token ids, BOS first; run right-padded in
    batches, which leaves every real position as it would be alone)."""
    norms = sink_value_norms(model, rows, sink_positions)  # [row layer head n_sink], query heads
    n_heads = model.config.num_attention_heads
    n_kv = getattr(model.config, "num_key_value_heads", None) or n_heads
    per_kv = norms[:, :, :: n_heads // n_kv]  # query heads of one KV head share its norm
    return per_kv.amin(0), per_kv.amax(0)


class SinkValueClamp:
    """Context manager: inside it, ``model``'s value vectors at ``sink_positions`` are clamped
    to ``[low, high]`` (``[layer kv_head n_sink]``, e.g. from :func:`sink_value_range` on θ_o)."""

    def __init__(self, model: nn.Module, low: Tensor, high: Tensor, sink_positions: Sequence[int]) -> None:
        self.model, self.positions = model, list(sink_positions)
        self.layers = find_decoder_layers(model)
        n_kv = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
        want = (len(self.layers), n_kv, len(self.positions))
        if tuple(low.shape) != want or tuple(high.shape) != want:
            raise ValueError(f"clamp range must be [layer kv_head n_sink] = {list(want)}, got {list(low.shape)}")
        self.low, self.high, self.n_kv = low, high, n_kv
        self._targets: list[tuple[int, int, int]] = []  # (row, position in this forward, index into S)
        self._handles: list = []

    def _locate(self, module, args, kwargs) -> None:
        """Where this forward's sink tokens are: the s-th real token of each row, counted in the
        attention mask (which spans cached and new tokens, and whose real tokens need not be
        contiguous: a shared prefix, then padding, then the row's own); only new positions can
        be clamped."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        new = ids if ids is not None else kwargs["inputs_embeds"][..., 0]
        batch, n_new = new.shape
        mask = kwargs.get("attention_mask")
        real = mask.bool() if mask is not None else torch.ones(batch, n_new, dtype=torch.bool, device=new.device)
        seen, offset = real.long().cumsum(1), real.shape[1] - n_new  # [batch total]; cached positions before
        self._targets = []
        for k, s in enumerate(self.positions):
            at = ((seen == s + 1) & real).long().argmax(1).tolist()
            has = (seen[:, -1] > s).tolist()
            self._targets += [(row, at[row] - offset, k) for row in range(batch) if has[row] and at[row] >= offset]

    def _clamp(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            if not self._targets:
                return None
            out = output.clone()
            v = out.unflatten(-1, (self.n_kv, -1))  # [batch pos kv_head d_head], a view of out
            for row, pos, k in self._targets:
                low, high = self.low[layer, :, k].to(out.device), self.high[layer, :, k].to(out.device)
                v[row, pos] = clamp_norms(v[row, pos], low, high)
            return out

        return hook

    def __enter__(self) -> "SinkValueClamp":
        self._handles = [self.model.register_forward_pre_hook(self._locate, with_kwargs=True)]
        self._handles += [b.self_attn.v_proj.register_forward_hook(self._clamp(l)) for l, b in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
