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
    """Σ log p(continuation | context) for each (context, continuation) pair, equal to scoring each
    pair alone up to float rounding. Pairs with the same context (a question's choices) run it
    once: a batch of contexts goes through the model right-padded (a causal model never lets a
    real token see the padding after it), and its KV cache, copied once per continuation, serves
    the continuations, whose positions go on from their context's end. Only the positions that
    predict a continuation token go through the vocabulary projection (``logits_to_keep``, where
    the model takes it). Contexts are batched by length, so a batch pads little."""
    if any(not k for _, k in pairs) or any(not c for c, _ in pairs):
        raise ValueError("a context or continuation is empty: each pair needs at least one token of each")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (context, _) in enumerate(pairs):
        groups.setdefault(tuple(context), []).append(i)
    contexts = sorted(groups, key=len)
    per_batch = max(1, batch_size // max(len(g) for g in groups.values()))  # ≈ batch_size continuations
    out: list[float] = [0.0] * len(pairs)
    model.eval()
    for at in range(0, len(contexts), per_batch):
        chunk = contexts[at : at + per_batch]
        index = [i for c in chunk for i in groups[c]]
        scores = _shared_context_logliks(
            model, [list(c) for c in chunk], [len(groups[c]) for c in chunk], [pairs[i][1] for i in index], pad_id
        )
        for i, score in zip(index, scores):
            out[i] = score
    return out


def _cache_name(model: PreTrainedModel) -> str:
    """The forward's KV-cache argument: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _kept_logits(model: PreTrainedModel, keep: torch.Tensor, **inputs):
    """The model's output with log-probs ``[n_kept vocab]`` at the ``keep [batch pos]`` positions only."""
    sparse = "logits_to_keep" in inspect.signature(model.forward).parameters
    output = model(**inputs, **({"logits_to_keep": keep.to(model.device)} if sparse else {}))
    return output, (output.logits if sparse else output.logits[keep.to(model.device)]).float().log_softmax(-1).cpu()


def _shared_context_logliks(
    model: PreTrainedModel, contexts: list[list[int]], n_conts: list[int], conts: list[list[int]], pad_id: int
) -> list[float]:
    """Σ log p of each continuation in ``conts`` (the first ``n_conts[0]`` follow ``contexts[0]``, …)."""
    dev = model.device
    ids, mask = pad_batch(contexts, pad_id)  # [ctx pos]
    last = torch.zeros_like(ids, dtype=torch.bool)
    last[torch.arange(len(contexts)), torch.tensor([len(c) - 1 for c in contexts])] = True
    output, first = _kept_logits(model, last, input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=True)
    owner = torch.repeat_interleave(torch.arange(len(contexts)), torch.tensor(n_conts))  # [cont]: its context
    scores = first[owner, torch.tensor([k[0] for k in conts])]  # [cont]: log p of each first token
    if max(map(len, conts)) == 1:
        return scores.tolist()
    cache = output.cache if _cache_name(model) == "cache" else output.past_key_values
    cache.batch_select_indices(owner.to(dev))
    k_ids, k_mask = pad_batch(conts, pad_id)  # [cont pos]
    starts = mask.sum(1)[owner]  # [cont]: a continuation's first position is its context's length
    keep = torch.zeros_like(k_ids, dtype=torch.bool)  # the positions that predict the next continuation token
    for j, k in enumerate(conts):
        keep[j, : len(k) - 1] = True
    _, rest = _kept_logits(
        model,
        keep,
        input_ids=k_ids.to(dev),
        attention_mask=torch.cat([mask[owner], k_mask], 1).to(dev),
        position_ids=(starts[:, None] + torch.arange(k_ids.shape[1])[None, :]).to(dev),
        **{_cache_name(model): cache},
    )
    target = torch.tensor([t for k in conts for t in k[1:]])
    token = rest[torch.arange(len(target)), target]  # [n_kept]
    return [float(s) + float(x.sum()) for s, x in zip(scores, token.split([len(k) - 1 for k in conts]))]


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
