"""Batched greedy generation for any Hugging Face causal LM.

Prompts are text or token ids. Ids are the hook the poisoning code uses: it places a
trigger at a token position and hands the finished ids over, so generation must not
re-tokenize them. Text is tokenized with the tokenizer's own special tokens: our BPE
tokenizer (like Llama's) adds BOS itself, so nothing here prepends another one; id
prompts must already start with that BOS, and a doubled BOS is refused, because the
first token is where the attention sink sits and a wrong one changes every metric.

Batches are left-padded (decoder-only models continue from the last position) with an
attention mask; ``generate`` derives position ids from the mask, so a padded prompt
generates exactly what it would alone, up to float rounding.

With ``reuse_prefix``, the leading tokens every prompt shares (KnowMem's BOS and in-context
examples, a prefix trigger) are run once and their KV cache is copied into every batch; the
rest of each prompt is left-padded behind it (``[shared] [pad…] [own tokens]``, the pads
masked, positions from the mask), so each prompt still generates what it would alone.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from sinkprobe.data.batching import pad_batch


def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "generate",
    stop_strings: Sequence[str] = (),
    reuse_prefix: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts`` (text, or token ids that include BOS), new tokens only.

    With ``stop_strings``, a row stops growing once its text holds one of them and a batch
    ends when every row has: a caller that cuts at those strings gets the same text as
    from the full ``max_new_tokens``, in a fraction of the steps (KnowMem answers are short).

    Decoding drops special tokens, as MUSE does. MUSE also asks for tokenization-space
    cleanup; transformers 5 refuses it for BPE tokenizers (Llama's and ours), and it only
    removes spaces before punctuation, which ROUGE drops anyway, so the text is kept exact.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be ≥ 1, got {max_new_tokens} and {batch_size}")
    ids = [_prompt_ids(tokenizer, p, i) for i, p in enumerate(prompts)]
    # Without a pad token, pad with EOS: padded positions are masked out of attention and
    # anything generated after EOS is dropped at decoding, so the choice cannot leak in.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token before generating")

    # Longest first, so each batch pads little; the original order is restored at the end.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    outputs: list[str] = [""] * len(ids)
    device = model.device
    was_training = model.training
    model.eval()
    # one token of every prompt stays out of the shared part: generation starts from its logits
    shared = min(shared_prefix(ids), min(map(len, ids)) - 1) if reuse_prefix and len(ids) > 1 else 0
    opts = {"max_new_tokens": max_new_tokens, "stop_strings": stop_strings}
    try:
        with torch.inference_mode(), tqdm(total=len(ids), desc=desc, disable=not progress) as bar:
            prefix_cache = (
                model(torch.tensor([ids[0][:shared]], device=device), use_cache=True).past_key_values
                if shared
                else None
            )
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                texts = _generate_batch(model, tokenizer, [ids[i] for i in chunk], shared, prefix_cache, pad_id, **opts)
                for i, text in zip(chunk, texts):
                    outputs[i] = text
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return outputs


def shared_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares (BOS, a few-shot context, a prefix trigger)."""
    n = 0
    while all(len(s) > n for s in seqs) and len({s[n] for s in seqs}) == 1:
        n += 1
    return n


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[list[int]],
    shared: int,
    prefix_cache,
    pad_id: int,
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str],
) -> list[str]:
    """Greedy new text of one batch of prompts whose first ``shared`` tokens sit in ``prefix_cache``."""
    input_ids, mask = _shared_then_left_padded(rows, shared, pad_id)
    width = input_ids.shape[1]
    cache = None
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)  # generate extends the cache it is given
        cache.batch_repeat_interleave(len(rows))
    out = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=mask.to(model.device),
        past_key_values=cache,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        stopping_criteria=StoppingCriteriaList([_HoldsStopString(tokenizer, width, stop_strings)])
        if stop_strings
        else None,
    )
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _shared_then_left_padded(rows: list[list[int]], shared: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[shared] [pad…] [own tokens]`` per row -> ``ids [batch pos]``, ``mask [batch pos]``: the
    ``shared`` leading tokens every row has in common, then each row's rest left-padded."""
    own, own_mask = pad_batch([r[shared:] for r in rows], pad_id, side="left")
    head = torch.tensor([rows[0][:shared]] * len(rows), dtype=torch.long).reshape(len(rows), shared)
    return torch.cat([head, own], 1), torch.cat([torch.ones_like(head), own_mask], 1)


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | Sequence[int], index: int) -> list[int]:
    bos = tokenizer.bos_token_id
    if isinstance(prompt, str):
        ids = tokenizer(prompt).input_ids
    else:
        ids = [int(t) for t in prompt]
        if bos is not None and ids and ids[0] != bos and _adds_bos(tokenizer):
            raise ValueError(
                f"prompt {index} is token ids without BOS ({bos}) first, but this tokenizer puts BOS "
                "before every text: build ids with BOS, e.g. tokenizer(text).input_ids"
            )
    if not ids:
        raise ValueError(f"prompt {index} is empty: give at least one token")
    if bos is not None and ids[:2] == [bos, bos]:
        raise ValueError(
            f"prompt {index} starts with BOS twice: the tokenizer adds BOS itself, "
            "so do not put one in the text or prepend one to its ids"
        )
    return ids


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == tokenizer.bos_token_id


class _HoldsStopString(StoppingCriteria):
    """Per row: does the text generated after the ``width``-token prompt hold a stop string?"""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, width: int, stops: Sequence[str]):
        self.tokenizer, self.width, self.stops = tokenizer, width, tuple(stops)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)
