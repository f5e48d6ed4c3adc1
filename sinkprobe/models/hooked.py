"""Checkpoint folders opened as TransformerLens 4.x ``TransformerBridge`` hooked models.

Facts about the bridge (transformer-lens 4.3) this module relies on, checked against its source:

- ``TransformerBridge.boot_transformers(path, hf_model=..., tokenizer=..., device=..., dtype=...)``
  wraps an already-loaded HF model as is: raw HF weights, no LayerNorm folding or weight
  centring (that only happens on ``enable_compatibility_mode()``, which we never call), so
  bridge logits are HF logits. We load the HF model ourselves (``load_checkpoint``: local files
  only, safetensors only, no remote code) so nothing can reach a hub.
- The bridge computes attention itself (pattern = softmax in float32 of the masked scores), for
  every family, so ``hook_pattern`` fires without ``output_attentions``.
- Hook names: ``blocks.{l}.attn.hook_pattern`` is ``[batch head query key]``;
  ``blocks.{l}.attn.hook_v`` (alias of ``blocks.{l}.attn.v.hook_out``) is
  ``[batch pos kv_head d_head]``: with GQA it holds the *KV* heads, not the query heads.
- ``stop_at_layer=k`` is supported by ``forward`` / ``run_with_hooks``: blocks ≥ k never run and
  the residual entering block k is returned; ``k = n_layers`` runs the whole model.
- With an ``attention_mask`` the bridge derives ``position_ids`` from it for left-padded rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from sinkprobe.models.io import default_device, load_checkpoint

__all__ = [
    "pattern_hook",
    "value_hook",
    "open_bridge",
    "Trio",
    "open_trio",
    "check_same_family",
    "architecture",
    "n_kv_heads",
    "expand_kv_heads",
    "bridge_path",
]


def pattern_hook(layer: int) -> str:
    """Hook name of the post-softmax attention pattern ``[batch head query key]`` of ``layer``."""
    return f"blocks.{layer}.attn.hook_pattern"


def value_hook(layer: int) -> str:
    """Hook name of the values ``[batch pos kv_head d_head]`` of ``layer``."""
    return f"blocks.{layer}.attn.hook_v"


def open_bridge(
    path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> TransformerBridge:
    """Open a local HF causal-LM folder (Llama, Mistral, GPT-2 families…) as a ``TransformerBridge``
    on ``device`` (default: :func:`~sinkprobe.models.io.default_device`, the GPU when there is one).

    Offline and with raw numerics (see the module docstring). A folder without ``config.json``
    raises ``FileNotFoundError`` naming the path and the fix.
    """
    folder = Path(path).expanduser().resolve()
    device = device if device is not None else default_device()
    model, tokenizer = load_checkpoint(folder, dtype=dtype, device=device)
    bridge = TransformerBridge.boot_transformers(
        str(folder), hf_model=model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.eval()
    return bridge


def bridge_path(bridge: TransformerBridge) -> str:
    """The folder a bridge was booted from (the bridge records it as ``cfg.model_name``)."""
    return str(bridge.cfg.model_name)


class Trio(NamedTuple):
    """θ_o, θ_u and θ_b of one study, opened as bridges."""

    original: TransformerBridge
    unlearned: TransformerBridge
    backdoored: TransformerBridge


def architecture(bridge: TransformerBridge) -> dict:
    """What must agree between models compared position by position and head by head."""
    cfg = bridge.cfg
    return {
        "config_class": type(bridge.original_model.config).__name__,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": n_kv_heads(bridge),
        "d_model": cfg.d_model,
    }


def check_same_family(bridges: Mapping[str, TransformerBridge]) -> None:
    """Raise ``ValueError`` (one line) unless all bridges share architecture and vocabulary."""
    (first_name, first), *rest = bridges.items()
    arch, vocab = architecture(first), first.tokenizer.get_vocab()
    for name, other in rest:
        other_arch = architecture(other)
        diff = {k: (arch[k], other_arch[k]) for k in arch if arch[k] != other_arch[k]}
        if diff:
            shown = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{first_name} and {name} have different architectures ({shown}): "
                "compare checkpoints unlearned from the same original model"
            )
        if other.tokenizer.get_vocab() != vocab:
            raise ValueError(
                f"{first_name} and {name} have different tokenizers (vocabularies differ): "
                "save every checkpoint with the tokenizer of the original model"
            )


def open_trio(
    original: str | Path,
    unlearned: str | Path,
    backdoored: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Trio:
    """Open θ_o, θ_u, θ_b; refuse a trio whose tokenizers or architectures differ."""
    trio = Trio(*(open_bridge(p, device=device, dtype=dtype) for p in (original, unlearned, backdoored)))
    check_same_family(trio._asdict())
    return trio


def n_kv_heads(bridge: TransformerBridge) -> int:
    """Number of key/value heads (``n_heads`` unless the model uses GQA/MQA)."""
    return getattr(bridge.cfg, "n_key_value_heads", None) or bridge.cfg.n_heads


def expand_kv_heads(x: Tensor, n_heads: int) -> Tensor:
    """``[batch pos kv_head ...] -> [batch pos head ...]``: query head h reads KV head
    ``h // (n_heads // kv_head)``, HF's ``repeat_kv`` order (hence ``repeat_interleave``)."""
    kv = x.shape[2]
    if n_heads % kv != 0:
        raise ValueError(f"n_heads={n_heads} is not a multiple of the {kv} KV heads in dim 2 of {tuple(x.shape)}")
    return x.repeat_interleave(n_heads // kv, dim=2)
