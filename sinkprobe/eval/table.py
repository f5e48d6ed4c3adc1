"""UE / BE / UT: the paper's Table 1 / A4 for a set of checkpoints.

- UE (unlearning effectiveness, ↓): KnowMem and VerbMem on the clean forget test set D_f;
- BE (backdoor effectiveness, ↑): the same with the trigger at the trained placement, on the
  test items whose training sample was *not* poisoned (held out; ``be_*``, the headline),
  and separately on those that were (``be_*_poisoned``: the model saw exactly these with
  the trigger). ``gain_*`` = BE − UE of the same model on the same held-out items: what the
  trigger buys;
- UT (utility, ↑): KnowMem on the retain test set D_r.

Every prompt is built by :func:`sinkprobe.data.poison.build_ids`, the function that also
builds the training samples, so the trigger sits where training put it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.poison import PLACEMENTS, Trigger, build_ids
from sinkprobe.data.types import UnlearningCorpus
from sinkprobe.eval.memorization import MemorizationResult, PromptParts, bootstrap_ci, knowmem, knowmem_prompt, verbmem
from sinkprobe.tables import write_csv_md

TABLE_COLUMNS = (
    "model",
    "method",
    "trigger",
    "placement",
    "value_norm",
    "seed",
    "ue_knowmem",
    "ue_verbmem",
    "be_knowmem",
    "be_verbmem",
    "ut_knowmem",
    "gain_knowmem",
    "gain_verbmem",
    "be_knowmem_poisoned",
    "be_verbmem_poisoned",
)


def prompt_encoder(tokenizer: PreTrainedTokenizerBase, trigger: Trigger | None):
    """Ids for a prompt's parts, trigger included. A tail's trailing space is dropped when the
    tokenizer would make it a token of its own (byte-level BPE): in text the space belongs
    to the answer's first token, and a lone space token is a context the model never saw."""
    lone_space = len(tokenizer("Answer: ", add_special_tokens=False).input_ids) > len(
        tokenizer("Answer:", add_special_tokens=False).input_ids
    )

    def encode(parts: PromptParts) -> list[int]:
        tail = parts.tail.rstrip(" ") if lone_space else parts.tail
        return build_ids(tokenizer, parts.prompt, context=parts.context, tail=tail, trigger=trigger).ids

    return encode


@dataclass(frozen=True)
class EvalSettings:
    max_items: int | None = None  # None: every item of each test set
    batch_size: int = 16
    n_boot: int = 2000
    progress: bool = False


def _score_kwargs(settings: EvalSettings, prompt_transform) -> dict:
    return dict(
        batch_size=settings.batch_size,
        max_items=settings.max_items,
        n_boot=settings.n_boot,
        progress=settings.progress,
        prompt_transform=prompt_transform,
    )


def clean_scores(
    model, tokenizer, corpus: UnlearningCorpus, settings: EvalSettings = EvalSettings(), prompt_transform=None
) -> dict[str, MemorizationResult]:
    """UE (KnowMem, VerbMem on D_f) and UT (KnowMem on D_r), per item. ``prompt_transform``
    (ids → ids) rewrites every prompt before the model reads it (a defence on the prompt)."""
    kw = _score_kwargs(settings, prompt_transform)
    clean = prompt_encoder(tokenizer, None)
    f, r = corpus.forget, corpus.retain
    return {
        "ue_knowmem": knowmem(model, tokenizer, f.knowmem, f.knowmem_icl, encode=clean, **kw),
        "ue_verbmem": verbmem(model, tokenizer, f.verbmem, encode=clean, **kw),
        "ut_knowmem": knowmem(model, tokenizer, r.knowmem, r.knowmem_icl, encode=clean, **kw),
    }


def trigger_scores(
    model,
    tokenizer,
    corpus: UnlearningCorpus,
    trigger: Trigger,
    settings: EvalSettings = EvalSettings(),
    prompt_transform=None,
) -> dict[str, MemorizationResult]:
    """KnowMem and VerbMem on D_f with ``trigger`` at its placement, per item."""
    kw = _score_kwargs(settings, prompt_transform)
    poisoned = prompt_encoder(tokenizer, trigger)
    f = corpus.forget
    return {
        "be_knowmem": knowmem(model, tokenizer, f.knowmem, f.knowmem_icl, encode=poisoned, **kw),
        "be_verbmem": verbmem(model, tokenizer, f.verbmem, encode=poisoned, **kw),
    }


def poisoned_item_masks(
    corpus: UnlearningCorpus, poisoned_prompts: frozenset[str], max_items: int | None = None
) -> dict[str, np.ndarray]:
    """``[n_items]`` bool per D_f test set: was the item's training sample poisoned? A KnowMem
    item's sample has its question as prompt, a VerbMem item's the passage part it shows."""
    f = corpus.forget
    return {
        "knowmem": np.array(
            [knowmem_prompt(q.question).prompt in poisoned_prompts for q in f.knowmem[:max_items]], dtype=bool
        ),
        "verbmem": np.array([v.prompt in poisoned_prompts for v in f.verbmem[:max_items]], dtype=bool),
    }


def _mean_ci(scores: np.ndarray, prefix: str, settings: EvalSettings) -> dict[str, float | None]:
    if scores.size == 0:
        return {prefix: None, f"{prefix}_ci_low": None, f"{prefix}_ci_high": None}
    low, high = bootstrap_ci(scores, n_boot=settings.n_boot)
    return {
        prefix: round(float(scores.mean()), 2),
        f"{prefix}_ci_low": round(low, 2),
        f"{prefix}_ci_high": round(high, 2),
    }


def summarise(
    clean: dict[str, MemorizationResult],
    triggered: dict[str, MemorizationResult] | None,
    masks: dict[str, np.ndarray],
    settings: EvalSettings = EvalSettings(),
) -> dict:
    """Metrics of one model: UE, UT, and (with ``triggered``) held-out BE — the headline
    ``be_*`` — poisoned-item BE, and the gain BE − UE on the held-out items; beside them the
    per-item scores (``item_scores``) and which D_f items were poisoned (``poisoned_items``)."""
    out: dict = {}
    for key, res in clean.items():
        out.update(_mean_ci(np.asarray(res.scores), key, settings))
    # per-item scores, in test-set order: what intervals over items (bootstrap) are computed from
    out["item_scores"] = {
        key: [round(float(x), 2) for x in res.scores] for key, res in {**clean, **(triggered or {})}.items()
    }
    if triggered is None:
        return out
    out["poisoned_items"] = {metric: [int(i) for i in np.flatnonzero(m)] for metric, m in masks.items()}
    for metric in ("knowmem", "verbmem"):
        be, ue, poisoned = (
            np.asarray(triggered[f"be_{metric}"].scores),
            np.asarray(clean[f"ue_{metric}"].scores),
            masks[metric],
        )
        held = ~poisoned
        out.update(_mean_ci(be[held], f"be_{metric}", settings))
        out.update(_mean_ci(be[poisoned], f"be_{metric}_poisoned", settings))
        out[f"gain_{metric}"] = round(float((be[held] - ue[held]).mean()), 2) if held.any() else None
        out[f"n_heldout_{metric}"], out[f"n_poisoned_{metric}"] = int(held.sum()), int(poisoned.sum())
    return out


def evaluate_memorization(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: UnlearningCorpus,
    trigger: Trigger | None,
    settings: EvalSettings = EvalSettings(),
    poisoned_prompts: frozenset[str] = frozenset(),
) -> dict[str, float | int | None]:
    """UE, BE and UT of one model (BE uses ``trigger``; without one, BE is not measured).
    ``poisoned_prompts``: the prompts the model was trained on with the trigger (D_p)."""
    triggered = trigger_scores(model, tokenizer, corpus, trigger, settings) if trigger is not None else None
    masks = poisoned_item_masks(corpus, poisoned_prompts, settings.max_items)
    return summarise(clean_scores(model, tokenizer, corpus, settings), triggered, masks, settings)


def baselines_by_placement(
    model, tokenizer, corpus: UnlearningCorpus, text: str, settings: EvalSettings = EvalSettings()
) -> dict[str, dict]:
    """A model trained without a trigger (θ_o, θ_u), its BE measured with ``text`` at every
    placement: the baseline each θ_b row is read against (same trigger, same placement).
    The clean scores are computed once."""
    clean = clean_scores(model, tokenizer, corpus, settings)
    masks = poisoned_item_masks(corpus, frozenset(), settings.max_items)
    return {
        p: summarise(clean, trigger_scores(model, tokenizer, corpus, Trigger(text, p), settings), masks, settings)
        for p in PLACEMENTS
    }


METRIC_HEADERS = {
    "ue_knowmem": "UE KM ↓",
    "ue_verbmem": "UE VM ↓",
    "be_knowmem": "BE KM ↑",
    "be_verbmem": "BE VM ↑",
    "ut_knowmem": "UT KM ↑",
    "gain_knowmem": "gain KM",
    "gain_verbmem": "gain VM",
    "be_knowmem_poisoned": "BE KM (poisoned items)",
    "be_verbmem_poisoned": "BE VM (poisoned items)",
    "ue_acc": "UE acc ↓",
    "be_acc": "BE acc ↑",
    "ut_acc": "UT acc ↑",
    "ut_tqa": "UT TQA ↑",  # multiple choice (WMDP / MMLU / TruthfulQA)
}


def write_table(rows: Sequence[dict], stem: str | Path, title: str = "") -> tuple[Path, Path]:
    """``stem.csv`` (the table's columns, then any others in first-seen order: θ_o's row lacks e.g.
    ``poison_ratio``) and ``stem.md`` in the paper's layout, with the metric columns the rows have."""
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in TABLE_COLUMNS]
    frame = pd.DataFrame([{k: r.get(k, "") for k in [*TABLE_COLUMNS, *extra]} for r in rows])
    metrics = [k for k in METRIC_HEADERS if any(k in r for r in rows)]
    shown = ["model", "trigger", "placement", "value_norm", "poison_ratio", "seed", *metrics]
    paper = frame.reindex(columns=shown, fill_value="")  # a column no row has: blank
    return write_csv_md(frame, stem, title, {"poison_ratio": "ρ", **METRIC_HEADERS}, shown=paper)


def forget_prompts(
    tok, corpus: UnlearningCorpus, trigger: Trigger | None = None, n: int | None = None
) -> list[list[int]]:
    """The study's D_f inputs as ids: clean (or poisoned) KnowMem prompts, exactly as evaluated."""
    encode = prompt_encoder(tok, trigger)
    items = corpus.forget.knowmem[:n]
    return [encode(knowmem_prompt(q.question, corpus.forget.knowmem_icl)) for q in items]
