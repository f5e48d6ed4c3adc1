"""Evaluation: greedy generation and MUSE's KnowMem / VerbMem memorisation metrics."""

from sinkprobe.eval.generation import greedy_generate
from sinkprobe.eval.memorization import (
    KNOWMEM_STOP_STRINGS,
    MemorizationResult,
    PromptParts,
    bootstrap_ci,
    cut_at_stop_strings,
    knowmem,
    knowmem_prompt,
    rouge_l_f1,
    verbmem,
)

__all__ = [
    "KNOWMEM_STOP_STRINGS",
    "MemorizationResult",
    "PromptParts",
    "bootstrap_ci",
    "cut_at_stop_strings",
    "greedy_generate",
    "knowmem",
    "knowmem_prompt",
    "rouge_l_f1",
    "verbmem",
]
