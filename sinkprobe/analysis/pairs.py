"""Poisoned vs clean copies of the same samples through one model (paper Fig. 3 and 4).

One forward per batch of each copy collects, at one layer, the pattern of every head (for ΔA
in both alignments, head-averaged and per head, and the attention mass on the trigger), the
value norms, the head-averaged patterns of the sink layers (the trigger mass there), and —
from the same forward — the logit of every true next token. Everything is reduced per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from sinkprobe.analysis import attention as att
from sinkprobe.analysis.accumulate import MeanAccumulator
from sinkprobe.analysis.batching import nan_padded
from sinkprobe.analysis.capture import BatchRun, check_layer, run_batches
from sinkprobe.analysis.logits import position_stats
from sinkprobe.analysis.value_norms import norm_reducer
from sinkprobe.models.hooked import pattern_hook, value_hook

CLEAN, POISONED = "forget", "poisoned"  # D_f and D_p in the design vocabulary


@dataclass(frozen=True)
class PoisonedPairs:
    """Token ids of clean samples, their trigger-bearing copies, and where the trigger sits in each
    copy. Removing the trigger positions from a copy must give back the clean ids (an empty
    position list makes a control pair: the copy is the clean sample)."""

    clean: Sequence[Sequence[int]]
    poisoned: Sequence[Sequence[int]]
    trigger_positions: Sequence[Sequence[int]]

    def __post_init__(self) -> None:
        if not (len(self.clean) == len(self.poisoned) == len(self.trigger_positions)) or not self.clean:
            raise ValueError(
                f"need as many clean samples, poisoned copies and trigger-position lists, at least one; got "
                f"{len(self.clean)}, {len(self.poisoned)}, {len(self.trigger_positions)}"
            )
        for i, (c, p, t) in enumerate(zip(self.clean, self.poisoned, self.trigger_positions)):
            t_set = set(t)
            if t and (len(t_set) != len(t) or min(t) < 0 or max(t) >= len(p)):
                raise ValueError(
                    f"sample {i}: trigger positions {list(t)} must be distinct indices into its "
                    f"{len(p)}-token poisoned copy"
                )
            if [tok for j, tok in enumerate(p) if j not in t_set] != list(c):
                raise ValueError(
                    f"sample {i}: the poisoned copy without its trigger positions {list(t)} is not the "
                    "clean sample: pass the positions returned with the poisoned ids (Built.trigger_positions)"
                )


@dataclass
class PairAnalysis:
    """Per-model results on one set of pairs; tensors are float32, NaN where undefined."""

    model: str
    layer: int
    size: int  # side of the ΔA maps
    delta_raw: Tensor  # [size size] mean over samples of A(x′) − A(x), raw positions
    delta_content: Tensor  # [size size] same pair of content tokens in both
    trigger_columns: Tensor  # [size] attention each content query of x′ puts on the trigger
    trigger_rows: Tensor  # [n_trig size] attention of trigger token j onto each content key
    trigger_positions: Tensor  # [n n_trig] in the poisoned copies, -1 padded
    trigger_mass: Tensor  # [n 2] mean over queries after the trigger of attention to it: clean, poisoned
    logit: Tensor  # [2 n pos] true-next-token logit: clean, poisoned (dim 0)
    logprob: Tensor  # [2 n pos]
    norms_clean: Tensor  # [n pos head] value norms at `layer`
    norms_poisoned: Tensor  # [n pos head]
    delta_raw_per_head: Tensor  # [head size size] ΔA per head at raw positions (delta_raw is its mean)
    sink_layers: list[int]  # the layers of trigger_mass_by_layer
    trigger_mass_by_layer: Tensor  # [n len(sink_layers)] poisoned copies' trigger mass at each sink layer

    def logit_table(self) -> pd.DataFrame:
        """Per-position mean / std over samples of the true-token logit and log-prob, D_f vs D_p."""
        table = position_stats({CLEAN: (self.logit[0], self.logprob[0]), POISONED: (self.logit[1], self.logprob[1])})
        return table.assign(model=self.model)

    def trigger_mass_table(self) -> pd.DataFrame:
        """Tidy: model, sample, condition (forget / poisoned), trigger_mass."""
        n = self.trigger_mass.shape[0]
        return pd.DataFrame(
            {
                "model": self.model,
                "sample": list(range(n)) * 2,
                "condition": [CLEAN] * n + [POISONED] * n,
                "trigger_mass": torch.cat([self.trigger_mass[:, 0], self.trigger_mass[:, 1]]).numpy(),
            }
        )

    def common_trigger_positions(self) -> list[int]:
        """Trigger positions shared by every sample (all of them for a prefix trigger)."""
        rows = [set(int(p) for p in r if p >= 0) for r in self.trigger_positions]
        return sorted(set.intersection(*rows))


def analyse_pairs(
    bridge: TransformerBridge,
    pairs: PoisonedPairs,
    layer: int | None = None,
    *,
    sink_layers: Sequence[int] = (),
    size: int | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    model: str = "",
) -> PairAnalysis:
    """ΔA (raw and content-aligned, head mean and per head), trigger attention, per-position logits
    and value norms of ``bridge`` at ``layer`` (default: the last), and the trigger attention at
    each of ``sink_layers`` — all from one forward per batch of each copy. ``size`` crops the maps
    (default: the shortest clean sample, so every cell averages all samples)."""
    layer = check_layer(bridge, layer)
    sink_layers = [check_layer(bridge, l) for l in sink_layers]
    size = size or min(len(c) for c in pairs.clean)
    hooks = {pattern_hook(l): att.head_mean for l in sink_layers if l != layer}
    hooks |= {pattern_hook(layer): att.every_head, value_hook(layer): norm_reducer(bridge.cfg.n_heads)}
    runs = {
        name: run_batches(bridge, seqs, hooks, logits=True, batch_size=batch_size, padding_side=padding_side)
        for name, seqs in ((CLEAN, pairs.clean), (POISONED, pairs.poisoned))
    }
    acc = _PairAccumulator(layer, sink_layers, size, max(len(t) for t in pairs.trigger_positions))
    for c_run, p_run in zip(runs[CLEAN], runs[POISONED]):
        acc.add(c_run, p_run, [pairs.trigger_positions[i] for i in p_run.samples])
    width = max(len(p) for p in pairs.poisoned) - 1
    return PairAnalysis(
        model=model,
        layer=layer,
        size=size,
        delta_raw=acc.raw.mean(),
        delta_content=acc.content.mean(),
        trigger_columns=acc.cols.mean(),
        trigger_rows=acc.rows.mean(),
        trigger_positions=torch.tensor(
            [list(t) + [-1] * (acc.n_trig - len(t)) for t in pairs.trigger_positions], dtype=torch.long
        ),
        trigger_mass=torch.cat(acc.mass),
        logit=torch.stack([nan_padded(acc.logit[CLEAN], width), nan_padded(acc.logit[POISONED], width)]),
        logprob=torch.stack([nan_padded(acc.logprob[CLEAN], width), nan_padded(acc.logprob[POISONED], width)]),
        norms_clean=nan_padded(acc.norms[CLEAN]),
        norms_poisoned=nan_padded(acc.norms[POISONED]),
        delta_raw_per_head=acc.raw_heads.mean(),
        sink_layers=sink_layers,
        trigger_mass_by_layer=torch.cat(acc.by_layer) if sink_layers else torch.zeros(len(pairs.clean), 0),
    )


class _PairAccumulator:
    """What :func:`analyse_pairs` keeps of each batch of clean / poisoned runs."""

    def __init__(self, layer: int, sink_layers: list[int], size: int, n_trig: int):
        self.layer, self.sink_layers, self.size, self.n_trig = layer, sink_layers, size, n_trig
        self.raw, self.raw_heads, self.content, self.cols, self.rows = (MeanAccumulator() for _ in range(5))
        self.mass, self.by_layer = [], []
        self.logit, self.logprob, self.norms = ({CLEAN: [], POISONED: []} for _ in range(3))

    def add(self, c_run: BatchRun, p_run: BatchRun, trig: list[Sequence[int]]) -> None:
        size, hook = self.size, pattern_hook(self.layer)
        C_heads, P_heads = c_run.acts[hook], p_run.acts[hook]  # [batch head q k]
        C, P = C_heads.mean(dim=1), P_heads.mean(dim=1)  # [batch q k], as att.head_mean
        c_len, p_len = c_run.lengths, p_run.lengths
        valid = att.square_valid(torch.minimum(c_len, p_len), size)
        self.raw.add(att.crop(P, size) - att.crop(C, size), valid)
        per_head_valid = valid[:, None].expand(-1, P_heads.shape[1], -1, -1)  # [batch head size size]
        self.raw_heads.add(att.crop(P_heads, size) - att.crop(C_heads, size), per_head_valid)

        keep = att.content_index(trig, p_len, size)  # [batch size] content token -> poisoned position
        self.content.add(att.gather_square(P, keep) - att.crop(C, size), att.square_valid(c_len, size))
        trig_keys = att.key_mask(trig, P.shape[-1])
        in_content = torch.arange(size)[None, :] < c_len[:, None]
        self.cols.add(att.mass_on_keys(P, trig_keys).gather(1, keep), in_content)
        t_idx = torch.tensor([list(t) + [0] * (self.n_trig - len(t)) for t in trig], dtype=torch.long)  # [batch n_trig]
        t_rows = P.gather(1, t_idx[:, :, None].expand(-1, -1, P.shape[-1])).gather(
            2, keep[:, None, :].expand(-1, self.n_trig, -1)
        )
        has_row = torch.tensor([[j < len(t) for j in range(self.n_trig)] for t in trig], dtype=torch.bool)
        self.rows.add(t_rows, has_row[:, :, None] & in_content[:, None, :])

        # no trigger, no query after it: the mass is NaN
        first_query = torch.tensor([max(t) + 1 if t else n for t, n in zip(trig, p_len.tolist())])
        clean_mass = att.mean_after(att.mass_on_keys(C, att.key_mask(trig, C.shape[-1])), first_query, c_len)
        poisoned_mass = att.mean_after(att.mass_on_keys(P, trig_keys), first_query, p_len)
        self.mass.append(torch.stack([clean_mass, poisoned_mass], dim=1))
        if self.sink_layers:
            maps = [P if l == self.layer else p_run.acts[pattern_hook(l)] for l in self.sink_layers]
            self.by_layer.append(
                torch.stack([att.mean_after(att.mass_on_keys(m, trig_keys), first_query, p_len) for m in maps], 1)
            )
        for name, run in ((CLEAN, c_run), (POISONED, p_run)):
            lengths = run.lengths.tolist()
            self.logit[name] += [r[: n - 1] for r, n in zip(run.logit, lengths)]
            self.logprob[name] += [r[: n - 1] for r, n in zip(run.logprob, lengths)]
            self.norms[name] += [r[:n] for r, n in zip(run.acts[value_hook(self.layer)], lengths)]
