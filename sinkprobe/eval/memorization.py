"""MUSE's memorisation metrics: KnowMem (QA knowledge) and VerbMem (verbatim continuation).

Both follow the MUSE reference code (github.com/swj0419/muse_bench, ``metrics/knowmem.py``,
``metrics/verbmem.py``, ``metrics/logger.py``):

- KnowMem prompt: ``"Question: {q}\\nAnswer: {a}\\n\\n"`` for every in-context example,
  then ``"Question: {q}\\nAnswer: "`` (trailing space included); greedy, 32 new tokens;
  the output is cut before the first "\\n\\n", "\\nQuestion" or "Question:".
- VerbMem: greedy continuation of the prompt, 128 new tokens, scored against the true
  continuation truncated to its first 128 tokens (MUSE counts BOS among them).
- Score: ROUGE-L F1 (``rouge_score``, no stemmer) of output against reference, mean ×100,
  with a percentile-bootstrap 95% interval over items (MUSE uses scipy's 9999 resamples).

Ours generates in left-padded batches (MUSE goes one prompt at a time; outputs match up to float rounding)
and strips KnowMem answers for display; ROUGE's tokenizer ignores the whitespace anyway.

Prompts are tokenized as whole strings, as MUSE does. Two hooks let the poisoning code
build the exact ids it trains on: ``encode`` turns a prompt's parts (context, prompt,
tail — the pieces :func:`sinkprobe.data.poison.build_ids` takes) into ids, and
``prompt_transform`` edits the ids (BOS included) before generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from rouge_score import rouge_scorer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.types import QAItem, VerbMemItem
from sinkprobe.eval.generation import greedy_generate

KNOWMEM_STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")
KNOWMEM_MAX_NEW_TOKENS = 32
VERBMEM_MAX_NEW_TOKENS = 128

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

PromptTransform = Callable[[list[int]], list[int]]


@dataclass(frozen=True)
class PromptParts:
    """A prompt as the pieces trigger placement refers to: ``context + prompt + tail``.

    KnowMem: context = the in-context examples, prompt = ``"Question: {q}"``, tail =
    ``"\\nAnswer: "``. VerbMem: the passage prefix is the prompt; context and tail are empty.
    """

    context: str
    prompt: str
    tail: str = ""

    @property
    def text(self) -> str:
        return self.context + self.prompt + self.tail


Encoder = Callable[[PromptParts], list[int]]


@dataclass(frozen=True)
class MemorizationResult:
    """One metric on one item set. ``scores``, ``mean`` and ``ci95`` are ROUGE-L F1 × 100."""

    metric: str
    mean: float
    ci95: tuple[float, float]
    scores: tuple[float, ...]
    outputs: tuple[str, ...]
    references: tuple[str, ...]

    def summary(self) -> dict[str, float]:
        """What a run card or a table row records."""
        return {"mean": self.mean, "ci95_low": self.ci95[0], "ci95_high": self.ci95[1], "n": len(self.scores)}


def rouge_l_f1(pred: str, gold: str) -> float:
    """ROUGE-L F1 in [0, 1] of ``pred`` against ``gold`` (lower-cased alphanumeric tokens, no stemming)."""
    return float(_SCORER.score(gold, pred)["rougeL"].fmeasure)  # rouge_score gives int 0 for empty text


def cut_at_stop_strings(text: str, stops: Sequence[str] = KNOWMEM_STOP_STRINGS) -> str:
    """``text`` up to the earliest occurrence of any stop string (MUSE splits on each in turn)."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text


def bootstrap_ci(
    scores: Sequence[float], n_boot: int = 9999, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over items; the same seed gives the same interval."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0 or n_boot < 1 or not 0 < level < 1:
        raise ValueError(
            f"bootstrap needs scores, n_boot ≥ 1 and 0 < level < 1 (got {x.size} scores, {n_boot}, {level})"
        )
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // x.size)  # bounds the index matrix to ~16 MB for large item sets
    for lo in range(0, n_boot, step):
        hi = min(n_boot, lo + step)
        means[lo:hi] = x[rng.integers(0, x.size, size=(hi - lo, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def knowmem_prompt(question: str, icl: Sequence[QAItem] = ()) -> PromptParts:
    """MUSE's few-shot KnowMem prompt for ``question``, split into its parts."""
    context = "".join(f"Question: {ex.question}\nAnswer: {ex.answer}\n\n" for ex in icl)
    return PromptParts(context=context, prompt=f"Question: {question}", tail="\nAnswer: ")


def knowmem(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[QAItem],
    icl: Sequence[QAItem] = (),
    *,
    max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS,
    batch_size: int = 8,
    max_items: int | None = None,
    encode: Encoder | None = None,
    prompt_transform: PromptTransform | None = None,
    n_boot: int = 9999,
    seed: int = 0,
    progress: bool = True,
) -> MemorizationResult:
    """KnowMem: few-shot QA with ``icl`` as the in-context examples, scored against each answer."""
    items = _first(items, max_items, "KnowMem")
    parts = [knowmem_prompt(it.question, icl) for it in items]
    raw = _generate(
        model,
        tokenizer,
        parts,
        max_new_tokens,
        batch_size,
        encode,
        prompt_transform,
        progress,
        "KnowMem",
        KNOWMEM_STOP_STRINGS,
        reuse_prefix=True,
    )  # every prompt opens with the same in-context examples
    outputs = [cut_at_stop_strings(o).strip() for o in raw]
    return _score("knowmem", outputs, [it.answer for it in items], n_boot, seed)


def verbmem(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[VerbMemItem],
    *,
    max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS,
    batch_size: int = 8,
    max_items: int | None = None,
    encode: Encoder | None = None,
    prompt_transform: PromptTransform | None = None,
    n_boot: int = 9999,
    seed: int = 0,
    progress: bool = True,
) -> MemorizationResult:
    """VerbMem: greedy continuation of each passage prefix, scored against its true continuation."""
    items = _first(items, max_items, "VerbMem")
    parts = [PromptParts(context="", prompt=it.prompt) for it in items]
    raw = _generate(model, tokenizer, parts, max_new_tokens, batch_size, encode, prompt_transform, progress, "VerbMem")
    references = [_first_tokens(tokenizer, it.gt, max_new_tokens) for it in items]
    return _score("verbmem", raw, references, n_boot, seed)


def _first(items: Sequence, max_items: int | None, what: str) -> list:
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be ≥ 1 or None, got {max_items}")
    items = list(items)[:max_items]
    if not items:
        raise ValueError(f"no {what} items to evaluate: the book has none (check the data it was loaded from)")
    return items


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    parts: list[PromptParts],
    max_new_tokens: int,
    batch_size: int,
    encode: Encoder | None,
    prompt_transform: PromptTransform | None,
    progress: bool,
    desc: str,
    stop_strings: Sequence[str] = (),
    reuse_prefix: bool = False,
) -> list[str]:
    if encode is None and prompt_transform is None:
        prompts: list = [p.text for p in parts]
    else:
        prompts = [list(encode(p)) if encode else tokenizer(p.text).input_ids for p in parts]
        if prompt_transform is not None:
            prompts = [list(prompt_transform(list(ids))) for ids in prompts]
    return greedy_generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
        stop_strings=stop_strings,
        reuse_prefix=reuse_prefix,
    )


def _first_tokens(tokenizer: PreTrainedTokenizerBase, text: str, n: int) -> str:
    # MUSE tokenizes the reference with special tokens, keeps the first n ids (so BOS
    # takes one of them) and decodes without them; copied as is to keep scores comparable.
    ids = tokenizer(text).input_ids[:n]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _score(metric: str, outputs: list[str], references: list[str], n_boot: int, seed: int) -> MemorizationResult:
    scores = [100 * rouge_l_f1(o, r) for o, r in zip(outputs, references)]
    return MemorizationResult(
        metric=metric,
        mean=float(np.mean(scores)),
        ci95=bootstrap_ci(scores, n_boot=n_boot, seed=seed),
        scores=tuple(scores),
        outputs=tuple(outputs),
        references=tuple(references),
    )
