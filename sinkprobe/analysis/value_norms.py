"""Value norms ‖v_i‖₂ per layer, query head and position (paper Sec. 5).

Same quantity as training's value-norm term (there from ``self_attn.v_proj``, here from the
bridge's ``hook_v``): the norm of each KV head's value, given to every query head that reads it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from sinkprobe.analysis.batching import nan_padded
from sinkprobe.analysis.capture import check_layer, run_batches
from sinkprobe.models.hooked import expand_kv_heads, value_hook


def value_norms(v: Tensor, n_heads: int) -> Tensor:
    """``v [batch pos kv_head d_head] -> [batch pos head]`` float32 ‖v‖₂ per query head.

    The norm is taken per KV head, then expanded: the same as expanding first, at 1/group the cost.
    """
    return expand_kv_heads(torch.linalg.vector_norm(v.float(), dim=-1), n_heads)


def norm_reducer(n_heads: int):
    """Reducer for :func:`sinkprobe.analysis.capture.run_batches` on a ``hook_v``."""
    return lambda v, mask: value_norms(v, n_heads)


def collect_value_norms(
    bridge: TransformerBridge,
    seqs: Sequence[Sequence[int]],
    layer: int | None = None,
    *,
    batch_size: int = 16,
    padding_side: str = "right",
) -> Tensor:
    """``[n pos head]`` value norms at ``layer`` (default: the last), NaN past each sample's end.
    The forward stops right after ``layer``."""
    layer = check_layer(bridge, layer)
    name = value_hook(layer)
    rows: list[Tensor] = []
    for run in run_batches(
        bridge, seqs, {name: norm_reducer(bridge.cfg.n_heads)}, batch_size=batch_size, padding_side=padding_side
    ):
        rows += [r[:n] for r, n in zip(run.acts[name], run.lengths.tolist())]
    return nan_padded(rows)
