"""Where a head's attention goes: the first token, the query itself, the previous token, delimiters, or other content.

Gu et al.'s α(0) says how much attention the first token gets. When it is small, this says
where the rest goes: a head reading content, a local (self / previous-token) head, or a head
parking on delimiters — newlines and punctuation, the "secondary sinks" of small models.
Each key is put in one class per query, in this order of precedence: first token, the query
itself, the previous token, a delimiter, other. Queries 1 … T−1 are averaged: query 0 can
only see itself.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from sinkprobe.analysis.attention import attention_patterns

KEY_CLASSES = ("first", "self", "previous", "delimiter", "other")


def delimiter_ids(tokenizer) -> set[int]:
    """Ids of the tokens that decode to a newline, or to punctuation and spaces only (``.``, ``:``, ``?`` …)."""
    out = set()
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if "\n" in text or (text.strip() and all(not c.isalnum() and not c.isspace() for c in text.strip())):
            out.add(i)
    return out - set(tokenizer.all_special_ids)


def key_class_map(ids: Sequence[int], delimiters: set[int]) -> Tensor:
    """``[query key]`` class index (into :data:`KEY_CLASSES`) of key k for query i; −1 for k > i."""
    n = len(ids)
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    is_delimiter = torch.tensor([t in delimiters for t in ids])[None, :].expand(n, n)
    classes = torch.full((n, n), KEY_CLASSES.index("other"))
    classes[is_delimiter] = KEY_CLASSES.index("delimiter")
    classes[(k == q - 1).expand(n, n)] = KEY_CLASSES.index("previous")
    classes[(k == q).expand(n, n)] = KEY_CLASSES.index("self")
    classes[:, 0] = KEY_CLASSES.index("first")
    classes[(k > q).expand(n, n)] = -1
    return classes


def key_class_shares(pattern: Tensor, classes: Tensor) -> Tensor:
    """``pattern [... query key]``, ``classes [query key]`` -> ``[... class]``: attention mass per
    class, averaged over queries 1 … T−1."""
    if pattern.shape[-1] < 2:
        raise ValueError("a sequence of one token has no query with a choice: give sequences of ≥ 2 tokens")
    onehot = torch.nn.functional.one_hot(classes.clamp(min=0), len(KEY_CLASSES)) * (classes >= 0)[..., None]
    mass = torch.einsum("...qk,qkc->...qc", pattern.float(), onehot.float())  # [... query class]
    return mass[..., 1:, :].mean(-2)


def attention_by_key_class(
    bridge: TransformerBridge,
    seqs: Sequence[Sequence[int]],
    layers: Sequence[int] | None = None,
    *,
    delimiters: set[int] | None = None,
    batch_size: int = 16,
) -> Tensor:
    """``[layer head class]``: :func:`key_class_shares` averaged over ``seqs`` (delimiters default
    to :func:`delimiter_ids` of the bridge's tokenizer)."""
    layers = list(range(bridge.cfg.n_layers)) if layers is None else list(layers)
    delimiters = delimiter_ids(bridge.tokenizer) if delimiters is None else set(delimiters)
    patterns = attention_patterns(bridge, seqs, layers, per_head=True, batch_size=batch_size)  # [layer head q k] each
    return torch.stack([key_class_shares(p, key_class_map(s, delimiters)) for p, s in zip(patterns, seqs)]).mean(0)
