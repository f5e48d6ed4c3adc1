"""Randomly initialised tiny Llamas for the tests that need a model but not a trained one
(GQA: 4 query heads over 2 KV heads; the MLP twice the width)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def random_llama(
    vocab_size: int, *, hidden: int = 64, layers: int = 2, max_positions: int = 512, seed: int = 0,
    bos: int | None = None, eos: int | None = None, pad: int | None = None, eager: bool = False,
) -> LlamaForCausalLM:  # fmt: skip
    """A ``LlamaForCausalLM`` drawn with ``torch.manual_seed(seed)``; ``pad`` also makes the
    embedding's padding row zero, as the config's ``pad_token_id`` does."""
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    if eager:
        cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)
