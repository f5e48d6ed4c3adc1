"""The one forward loop of the analysis: batches through a bridge, hooks reduced on the fly.

Each hook's activation is put in content-first layout and handed to a *reducer* that keeps
only what the analysis needs (a head mean, per-head sink scores, value norms), so a batch
never holds more than one layer's pattern at a time. Only the requested hooks are attached,
and when no logits are wanted the forward stops after the last hooked layer
(``stop_at_layer``): the blocks above it never run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from sinkprobe.analysis.batching import content_first, content_offsets
from sinkprobe.analysis.logits import true_token_scores
from sinkprobe.data.batching import pad_batch

# (activation in content-first layout, mask [batch pos] in the same layout) -> reduced tensor
Reducer = Callable[[Tensor, Tensor], Tensor]


@dataclass
class BatchRun:
    """What one batch yields; every tensor is in content-first layout, batch first."""

    samples: range  # which input samples this batch holds
    mask: Tensor  # [batch pos]
    acts: dict[str, Tensor] = field(default_factory=dict)  # hook name -> reduced activation
    logit: Tensor | None = None  # [batch pos-1] logit of the true next token, NaN past the end
    logprob: Tensor | None = None  # [batch pos-1]

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(1)


def _position_dims(hook_name: str) -> tuple[int, ...]:
    # Patterns and scores are [batch head query key]; everything else we hook is [batch pos ...].
    return (2, 3) if hook_name.endswith(("hook_pattern", "hook_attn_scores")) else (1,)


def _layer(hook_name: str) -> int:
    parts = hook_name.split(".")
    if parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"hook {hook_name!r} is not a per-layer hook: use names like 'blocks.3.attn.hook_pattern'")
    return int(parts[1])


def check_layer(bridge: TransformerBridge, layer: int | None) -> int:
    """``None`` -> the last layer; otherwise a layer index the model has (negative counts back)."""
    n = bridge.cfg.n_layers
    if layer is None:
        return n - 1
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} does not exist: this model has layers 0..{n - 1}")
    return layer % n


def run_batches(
    bridge: TransformerBridge,
    seqs: Sequence[Sequence[int]],
    hooks: Mapping[str, Reducer],
    *,
    logits: bool = False,
    batch_size: int = 16,
    padding_side: str = "right",
) -> Iterator[BatchRun]:
    """Forward ``seqs`` (token-id lists) in batches, yielding reduced hooks and true-token scores."""
    if not hooks and not logits:
        raise ValueError("nothing to collect: give hooks, logits=True, or both")
    stop = None if logits else max(_layer(h) for h in hooks) + 1
    pad_id = bridge.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id  # any id will do: padded positions are masked out
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[start : start + batch_size], pad_id, padding_side)
        offsets = content_offsets(mask)
        ids, mask = ids.to(bridge.cfg.device), mask.to(bridge.cfg.device)
        cmask = content_first(mask, offsets, (1,))
        run = BatchRun(samples=range(start, start + len(ids)), mask=cmask.cpu())

        def attach(name: str, reduce: Reducer):
            def hook_fn(act: Tensor, hook) -> None:
                run.acts[name] = reduce(content_first(act, offsets, _position_dims(name)), cmask).cpu()

            return (name, hook_fn)

        with torch.inference_mode():
            out = bridge.run_with_hooks(
                ids,
                fwd_hooks=[attach(n, r) for n, r in hooks.items()],
                attention_mask=mask,
                stop_at_layer=stop,
                return_type="logits",
            )
            if logits:
                cids = content_first(ids, offsets, (1,))
                logit, logprob = true_token_scores(content_first(out, offsets, (1,)), cids, cmask)
                run.logit, run.logprob = logit.cpu(), logprob.cpu()
        yield run
