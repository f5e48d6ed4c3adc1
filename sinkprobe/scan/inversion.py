"""Trigger inversion: search a short token sequence that makes a model say the forget set's answers.

A backdoor-unlearned θ_b answers D_f again when its trigger is present; a normally unlearned
θ_u has no such key. Without knowing the trigger, search for one: ``k`` tokens placed in the
prompt (right after BOS, where the paper's prefix trigger and the attention sink sit, or at
another position) that maximise the model's log-likelihood of the forget answers. The search is
greedy coordinate gradient (GCG, Zou et al. 2023): the gradient of the loss with respect to a
one-hot encoding of the trigger ranks, per position, the tokens whose swap would lower the loss
most; a batch of random single swaps among those is scored exactly, and the best is kept.

Rows are :class:`QARow`: a KnowMem item as ids, with the prompt index where each placement puts a
trigger — where training puts one (:mod:`sinkprobe.data.poison`): right after BOS, at the word
boundary mid-question, after the question and before ``"\nAnswer:"``. Behind a prefix sequence the
prompt is space-led, as it is behind a trained "trigger " — so a splice of a trained trigger's
ids gives the very ids training saw, at every placement. The loss is the mean answer
NLL per row (``[candidate]`` for a batch of candidate triggers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.batching import pad_batch
from sinkprobe.data.poison import Trigger, build_ids, trigger_cut
from sinkprobe.data.types import QAItem
from sinkprobe.validation import at_least, check_fields, one_of

SCAN_PLACEMENTS = ("prefix", "infix", "suffix")  # right after BOS, mid-question, or after the question
ANSWER_CUE = "\nAnswer:"  # training's QA completion starts with it (data.poison.qa_samples)


@dataclass(frozen=True)
class InversionConfig:
    """The search's budget. Defaults fit one SmolLM2-135M search in a few minutes on 2 CPU cores."""

    n_tokens: int = 4  # k, the trigger's length in tokens
    steps: int = 30
    top_k: int = 32  # candidate tokens per position, from the gradient
    candidates: int = 16  # single-token swaps scored exactly per step
    rows_per_step: int = 8  # forget items the loss averages over at each step
    placement: str = "prefix"
    seed: int = 0

    def __post_init__(self) -> None:
        rules = {"n_tokens": at_least(1), "steps": at_least(0), "top_k": at_least(1), "candidates": at_least(1),
                 "rows_per_step": at_least(1), "placement": one_of(*SCAN_PLACEMENTS), "seed": at_least(0)}  # fmt: skip
        check_fields(self, "scan", rules)


@dataclass
class Inversion:
    """The search's outcome: the best trigger found and its loss along the way."""

    tokens: list[int]
    text: str
    loss: float  # mean answer NLL with ``tokens`` on the search rows
    history: list[float] = field(default_factory=list)  # the kept loss after each step


@dataclass(frozen=True)
class QARow:
    """One KnowMem item as the search sees it."""

    question: str  # "Question: q": the text a trained trigger is inserted into
    prompt: list[int]  # ids of question + ANSWER_CUE, no BOS
    spaced: list[int]  # the same, space-led: what follows a prefix sequence
    answer: list[int]  # ids of " a"
    cuts: dict[str, int]  # placement -> prompt index where training's trigger goes


def qa_rows(tok: PreTrainedTokenizerBase, items: list[QAItem]) -> list[QARow]:
    rows = []
    for it in items:
        question = f"Question: {it.question}"
        prompt, spaced = (tok(s + question + ANSWER_CUE, add_special_tokens=False).input_ids for s in ("", " "))
        answer = tok(f" {it.answer}", add_special_tokens=False).input_ids
        cuts = {p: trigger_cut(tok, p, question, ANSWER_CUE) for p in SCAN_PLACEMENTS}
        rows.append(QARow(question, prompt, spaced, answer, cuts))
    return rows


def _sequences(bos: int, rows: list[QARow], trigger: list[int], placement: str):
    """Per row: ids, where the trigger starts, where the answer starts."""
    seqs, starts, answers = [], [], []
    for row in rows:
        cut, prompt = row.cuts[placement], row.spaced if placement == "prefix" and trigger else row.prompt
        before, after = [bos] + prompt[:cut], prompt[cut:]
        seqs.append(before + trigger + after + row.answer)
        starts.append(len(before))
        answers.append(len(before) + len(trigger) + len(after))
    return seqs, starts, answers


def planted_sequences(tok: PreTrainedTokenizerBase, rows: list[QARow], text: str, placement: str):
    """Per row: the ids with the trigger *text* inserted as training inserts it, and where the
    answer starts; and the trigger's own ids (of the first row)."""
    seqs, answers, ids = [], [], []
    for row in rows:
        built = build_ids(tok, row.question, tail=ANSWER_CUE, trigger=Trigger(text, placement))
        seqs.append(built.ids + row.answer)
        answers.append(len(built.ids))
        ids = ids or [built.ids[p] for p in built.trigger_positions]
    return seqs, answers, ids


def sequences_with(tok: PreTrainedTokenizerBase, rows, trigger: list[int], placement: str) -> list[list[int]]:
    """Each row's ids (BOS, prompt and answer) with ``trigger`` at ``placement``."""
    return _sequences(tok.bos_token_id, rows, list(trigger), placement)[0]


def answer_nll(model: PreTrainedModel, embeds: Tensor, mask: Tensor, ids: Tensor, answer_mask: Tensor) -> Tensor:
    """``[batch]`` mean NLL of the answer tokens (``answer_mask [batch pos]``) given ``embeds``."""
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].float()
    logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [batch pos-1]
    m = answer_mask[:, 1:].float()
    return -(logp * m).sum(1) / m.sum(1)


def _batch(model, seqs: list[list[int]], answers: list[int], pad: int) -> tuple[Tensor, Tensor, Tensor]:
    ids, mask = pad_batch(seqs, pad)
    answer_mask = torch.zeros_like(ids)
    for j, (s, a) in enumerate(zip(seqs, answers)):
        answer_mask[j, a : len(s)] = 1
    return ids.to(model.device), mask.to(model.device), answer_mask.to(model.device)


@torch.no_grad()
def trigger_loss(
    model: PreTrainedModel, tok, rows, triggers: list[list[int]], placement: str, batch_size: int = 64
) -> Tensor:
    """``[n_triggers]``: mean over ``rows`` of the answer NLL with each trigger in place."""
    if not rows:
        raise ValueError("the answer loss needs at least one (question, answer) row: give more items")
    flat = []
    for trig in triggers:
        seqs, _, answers = _sequences(tok.bos_token_id, rows, list(trig), placement)
        flat += list(zip(seqs, answers))
    return _answer_nll(model, tok, flat, batch_size).view(len(triggers), len(rows)).mean(1)


@torch.no_grad()
def planted_trigger_loss(model: PreTrainedModel, tok, rows: list[QARow], text: str, placement: str,
                         batch_size: int = 64) -> tuple[float, list[int]]:  # fmt: skip
    """The mean answer NLL over ``rows`` with the trigger ``text`` inserted as training inserts it
    at ``placement``, and the trigger's ids there."""
    seqs, answers, ids = planted_sequences(tok, rows, text, placement)
    return float(_answer_nll(model, tok, list(zip(seqs, answers)), batch_size).mean()), ids


def _answer_nll(model, tok, flat: list[tuple[list[int], int]], batch_size: int) -> Tensor:
    """``[len(flat)]`` answer NLL of each (ids, where the answer starts)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for i in range(0, len(flat), batch_size):
        seqs, answers = zip(*flat[i : i + batch_size])
        ids, mask, am = _batch(model, list(seqs), list(answers), pad)
        out.append(answer_nll(model, model.get_input_embeddings()(ids), mask, ids, am).cpu())
    return torch.cat(out)


def _gradient(model, tok, rows, trigger: list[int], placement: str, allowed: Tensor) -> Tensor:
    """``[k vocab]`` gradient of the mean answer NLL w.r.t. the trigger's one-hot encoding
    (+inf where a token is not allowed, so it is never proposed)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    seqs, starts, answers = _sequences(tok.bos_token_id, rows, trigger, placement)
    ids, mask, am = _batch(model, seqs, answers, pad)
    table = model.get_input_embeddings().weight  # [vocab d_model]
    onehot = torch.zeros(len(trigger), table.shape[0], device=table.device, dtype=table.dtype)
    onehot[torch.arange(len(trigger)), torch.tensor(trigger)] = 1.0
    onehot.requires_grad_(True)
    embeds = model.get_input_embeddings()(ids).detach()
    trig_embeds = onehot @ table  # [k d_model]
    rows_idx = torch.arange(len(seqs))[:, None]
    cols = torch.tensor(starts)[:, None] + torch.arange(len(trigger))[None, :]
    embeds = embeds.index_put((rows_idx, cols), trig_embeds.expand(len(seqs), -1, -1))
    answer_nll(model, embeds, mask, ids, am).mean().backward()
    return onehot.grad.float().masked_fill(~allowed, float("inf"))


def allowed_tokens(tok: PreTrainedTokenizerBase, n_embeddings: int) -> Tensor:
    """``[n_embeddings]`` bool: tokens a trigger may use: the tokenizer's, no special tokens (an
    embedding table padded past the tokenizer has rows no text can produce)."""
    allowed = torch.zeros(n_embeddings, dtype=torch.bool)
    allowed[: min(len(tok), n_embeddings)] = True
    allowed[[i for i in tok.all_special_ids if i < n_embeddings]] = False
    return allowed


def random_sequence(tok: PreTrainedTokenizerBase, n: int, seed: int, n_embeddings: int) -> list[int]:
    """``n`` tokens drawn uniformly from those a trigger may use: a control sequence (the sink
    signature's, the random-key probe's)."""
    allowed = allowed_tokens(tok, n_embeddings).nonzero().squeeze(1)
    pick = torch.randint(len(allowed), (n,), generator=torch.Generator().manual_seed(seed))
    return allowed[pick].tolist()


def invert_trigger(model: PreTrainedModel, tok: PreTrainedTokenizerBase, rows, cfg: InversionConfig = InversionConfig(),
                   progress=None) -> Inversion:  # fmt: skip
    """GCG search for ``cfg.n_tokens`` tokens at ``cfg.placement`` that minimise the answer NLL of
    ``rows``. Candidates are ranked on each step's minibatch of rows; the best one replaces the
    trigger only if it also lowers the loss on all ``rows``. ``progress``, if given, is called with
    (step, loss) after each step. The model's weights, gradient flags and train/eval mode are left
    as they were."""
    if not rows:
        raise ValueError("trigger inversion needs forget items to recover: give at least one (question, answer) row")
    gen = torch.Generator().manual_seed(cfg.seed)
    training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # only the trigger's one-hot needs a gradient
    try:
        allowed = allowed_tokens(tok, model.get_input_embeddings().weight.shape[0])
        pool = torch.nonzero(allowed).flatten()
        trigger = pool[torch.randint(len(pool), (cfg.n_tokens,), generator=gen)].tolist()
        best = float(trigger_loss(model, tok, rows, [trigger], cfg.placement)[0])
        history = []
        for step in range(cfg.steps):
            batch = [rows[int(i)] for i in torch.randperm(len(rows), generator=gen)[: cfg.rows_per_step]]
            grad = _gradient(model, tok, batch, trigger, cfg.placement, allowed.to(model.device)).cpu()
            top = (-grad).topk(min(cfg.top_k, int(allowed.sum())), dim=1).indices  # [k top_k]: most promising swaps
            cands = []
            for _ in range(cfg.candidates):
                pos = int(torch.randint(cfg.n_tokens, (1,), generator=gen))
                cand = list(trigger)
                cand[pos] = int(top[pos, int(torch.randint(top.shape[1], (1,), generator=gen))])
                cands.append(cand)
            pick = cands[int(trigger_loss(model, tok, batch, cands, cfg.placement).argmin())]
            loss = float(trigger_loss(model, tok, rows, [pick], cfg.placement)[0])
            if loss < best:
                trigger, best = pick, loss
            history.append(best)
            if progress is not None:
                progress(step + 1, best)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(training)
    return Inversion(trigger, tok.decode(trigger), best, history)
