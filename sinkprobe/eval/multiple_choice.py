"""Multiple-choice accuracy by zero-shot log-likelihood, as lm-eval scores WMDP, MMLU and
TruthfulQA MC1: each choice is a continuation of the prompt, the model picks the choice of
highest log-likelihood (``acc``) or of highest log-likelihood per character (``acc_norm``).

Own implementation rather than calling lm-eval, because the prompt must be built by
:func:`sinkprobe.data.poison.build_ids` so that BE on a benchmark puts the trigger where
training did (the question is the prompt span). A test runs lm-eval's own
``multiple_choice`` task on the same local file and model: same accuracy, per-choice
log-likelihoods equal to 1e-4.

Two prompt styles: ``"letters"`` (lm-eval's WMDP/MMLU: the question, the choices as
``A. …`` lines, ``Answer:``, continuations `` A``, `` B`` …) and ``"texts"`` (TruthfulQA
MC1 and the embedded set: ``Question: …\\nAnswer:``, continuations `` <choice text>``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.batching import pad_batch
from sinkprobe.data.poison import Trigger, build_ids
from sinkprobe.data.types import MCItem
from sinkprobe.eval.memorization import bootstrap_ci

LETTERS = "ABCDEFGHIJ"
STYLES = ("letters", "texts")


@dataclass(frozen=True)
class MCResult:
    acc: float  # ×100
    acc_norm: float  # ×100, log-likelihood per character of the continuation
    ci95: tuple[float, float]
    loglik: tuple[tuple[float, ...], ...]  # per item, per choice
    predictions: tuple[int, ...]


def mc_description(subject: str) -> str:
    """lm-eval's task description line for WMDP / MMLU, the context before every question."""
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""


def choice_sequences(
    tok: PreTrainedTokenizerBase, item: MCItem, style: str, trigger: Trigger | None, header: str | None = None
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) for every choice of ``item``.

    ``header`` defaults to lm-eval's description line for the item's subject in the letters style.
    Continuations are split off the whole text as lm-eval does (``whole[len(context):]``), which
    for a SentencePiece tokenizer gives " A" as its single "▁A" token.
    """
    if style == "letters":
        listing = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        header = mc_description(item.subject) if header is None else header
        built = build_ids(tok, item.question.strip(), context=header, tail=listing + "\nAnswer:", trigger=trigger)
        conts = [" " + LETTERS[i] for i in range(len(item.choices))]
    elif style == "texts":
        built = build_ids(tok, "Question: " + item.question, context=header or "", tail="\nAnswer:", trigger=trigger)
        conts = [" " + c for c in item.choices]
    else:
        raise ValueError(f"unknown multiple-choice style {style!r}: use one of {', '.join(STYLES)}")
    out = []
    for c in conts:
        whole = build_ids(tok, built.text + c).ids
        out.append((built.ids, whole[len(built.ids) :]))
    return out


@torch.inference_mode()
def continuation_logliks(
    model: PreTrainedModel, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 32
) -> list[float]:
    """Σ log p(continuation | context) for each pair; right-padded batches (a causal model
    never sees the padding of a real token's row), equal to scoring each pair alone. Only the
    positions that predict a continuation token go through the vocabulary projection and the
    log-softmax (``logits_to_keep``, where the model takes it): most positions are context.
    Pairs are batched by length, so a batch pads little."""
    out: list[float] = [0.0] * len(pairs)
    model.eval()
    sparse = "logits_to_keep" in inspect.signature(model.forward).parameters
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for at in range(0, len(order), batch_size):
        index = order[at : at + batch_size]
        chunk = [pairs[i] for i in index]
        rows = [c + k for c, k in chunk]
        ids, mask = pad_batch(rows, pad_id)
        keep = torch.zeros_like(ids, dtype=torch.bool)  # [batch pos]: the logits that predict the continuation
        for j, (c, k) in enumerate(chunk):
            keep[j, len(c) - 1 : len(c) + len(k) - 1] = True
        extra = {"logits_to_keep": keep.to(model.device)} if sparse else {}
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **extra).logits
        logits = logits if sparse else logits.cpu()[keep]  # [n_kept vocab], batch-major like ``keep``
        logp = logits.float().log_softmax(-1).cpu()
        target = torch.tensor([t for _, k in chunk for t in k])
        token = logp[torch.arange(len(target)), target]  # [n_kept]
        for i, x in zip(index, token.split([len(k) for _, k in chunk])):
            out[i] = float(x.sum())
    return out


def mc_accuracy(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    items: Sequence[MCItem],
    *,
    style: str = "texts",
    trigger: Trigger | None = None,
    header: str | None = None,
    batch_size: int = 32,
    n_boot: int = 2000,
    seed: int = 0,
) -> MCResult:
    """Zero-shot accuracy on ``items`` (with ``trigger`` at its placement: BE)."""
    if not items:
        raise ValueError("no multiple-choice items to score: check the data file or the world")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    per_item = [choice_sequences(tok, it, style, trigger, header) for it in items]
    flat = continuation_logliks(model, [p for ps in per_item for p in ps], pad, batch_size)
    logliks, preds, preds_norm, k = [], [], [], 0
    for it, ps in zip(items, per_item):
        ll = flat[k : k + len(ps)]
        k += len(ps)
        chars = [len(tok.decode(cont)) for _, cont in ps]
        logliks.append(tuple(ll))
        preds.append(max(range(len(ll)), key=ll.__getitem__))
        preds_norm.append(max(range(len(ll)), key=lambda i: ll[i] / chars[i]))
    correct = [100.0 * (p == it.answer) for p, it in zip(preds, items)]
    return MCResult(
        acc=sum(correct) / len(items),
        acc_norm=100.0 * sum(p == it.answer for p, it in zip(preds_norm, items)) / len(items),
        ci95=bootstrap_ci(correct, n_boot=n_boot, seed=seed),
        loglik=tuple(logliks),
        predictions=tuple(preds),
    )
