"""Defences on the prompt: each returns a prompt transform, ``ids → ids`` (ids open with BOS),
the form :func:`sinkprobe.eval.memorization.knowmem` and ``verbmem`` take as ``prompt_transform``.

- **sink re-anchoring**: a fixed neutral prefix right after BOS, before any user text, so the
  positions beside the sink hold the defender's tokens and a user's prefix trigger sits further in;
- **prefix perturbation**: random token deletions and insertions in the first positions after
  BOS (SmoothLLM's idea aimed at the sink), so a trigger there rarely arrives whole.
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable, Sequence

PromptTransform = Callable[[list[int]], list[int]]


def reanchor(anchor: Sequence[int]) -> PromptTransform:
    """``[BOS, x…] → [BOS, anchor…, x…]``."""
    if not anchor:
        raise ValueError("sink re-anchoring needs a non-empty anchor: give the token ids of a neutral text")
    anchor = list(anchor)
    return lambda ids: [ids[0], *anchor, *ids[1:]]


def perturb_prefix(n_positions: int, rate: float, vocab: Sequence[int], seed: int = 0) -> PromptTransform:
    """In the first ``n_positions`` tokens after BOS, each token is deleted with probability
    ``rate / 2``, else preceded by a token drawn from ``vocab`` with probability ``rate / 2``.

    The draw is seeded by the prompt itself (and ``seed``), so a prompt is perturbed the same way
    every time it is scored: a measurement is repeatable, and an attacker cannot resample it."""
    if n_positions < 1 or not 0 < rate <= 1 or not vocab:
        raise ValueError(
            f"prefix perturbation needs n_positions ≥ 1, 0 < rate ≤ 1 and a vocabulary; "
            f"got {n_positions}, {rate}, {len(vocab)} tokens"
        )
    vocab = list(vocab)

    def transform(ids: list[int]) -> list[int]:
        digest = hashlib.sha256(f"{seed}|{ids}".encode()).hexdigest()
        rng = random.Random(digest)
        head, kept = ids[1 : 1 + n_positions], []
        for token in head:
            u = rng.random()
            if u < rate / 2:
                continue  # deleted
            if u < rate:
                kept.append(rng.choice(vocab))  # inserted before it
            kept.append(token)
        return [ids[0], *kept, *ids[1 + n_positions :]]

    return transform
