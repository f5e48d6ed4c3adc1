"""Value-norm correlation between two models at sink positions (paper Fig. 5).

Points are (sample, head) pairs at one position. The bootstrap resamples *samples* (each with
all its heads): heads of one sample share their input, so resampling single points would
treat correlated points as independent and give too narrow an interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from sinkprobe.analysis.value_norms import collect_value_norms
from sinkprobe.eval.generation import shared_prefix
from sinkprobe.models.hooked import Trio, check_same_family


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (batched: ``[..., n] -> [...]``)."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    return (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))


def bootstrap_pearson(
    x: np.ndarray, y: np.ndarray, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``x, y [sample head]`` -> (r over all points, percentile CI low, high) resampling samples."""
    r = float(pearson(x.ravel(), y.ravel()))
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    boot = pearson(x[idx].reshape(n_boot, -1), y[idx].reshape(n_boot, -1))
    lo, hi = np.nanquantile(boot, [(1 - ci) / 2, (1 + ci) / 2])
    return r, float(lo), float(hi)


def norm_correlation(
    norms_a: Tensor, norms_b: Tensor, position: int, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> dict:
    """``norms [n pos head]`` of two models on the same samples -> r and CI at ``position``
    over the samples that reach it."""
    a, b = norms_a[:, position].double().numpy(), norms_b[:, position].double().numpy()  # [n head]
    have = ~(np.isnan(a).any(1) | np.isnan(b).any(1))
    if have.sum() < 2:
        raise ValueError(f"fewer than 2 samples reach position {position}: choose a smaller sink position")
    r, lo, hi = bootstrap_pearson(a[have], b[have], n_boot, ci, seed)
    return {
        "position": position,
        "r": r,
        "ci_low": lo,
        "ci_high": hi,
        "n_samples": int(have.sum()),
        "n_points": int(a[have].size),
    }


def varying_positions(data: Mapping[str, Sequence[Sequence[int]]], positions: Sequence[int]) -> tuple[list[int], str]:
    """The sink positions at which ‖v‖ varies across samples in *every* data set (so the three
    comparisons of Fig. 5 are read at the same positions), and why. Up to a data set's shared
    prefix every sample has the same tokens, so a causal model's values there are the same in
    every sample and a correlation over samples means nothing. If none of ``positions``
    varies, the first position past every data set's shared prefix is used instead."""
    shared = {name: shared_prefix(seqs) for name, seqs in data.items()}
    first = max(shared.values())
    used = [p for p in positions if p >= first]
    why = (
        f"leading tokens shared by every sample: {shared}; positions < {first} carry the same tokens in every sample "
        "of some data set"
    )
    if used:
        return used, f"{why}, so S = {list(positions)} is read at {used}"
    return [first], f"{why}, so none of S = {list(positions)} varies and the first varying position, {first}, is used"


@dataclass
class NormCorrelation:
    """Fig. 5 table: one row per comparison and sink position."""

    table: (
        pd.DataFrame
    )  # comparison, model_a, model_b, dataset, layer, position, r, ci_low, ci_high, n_samples, n_points
    layer: int
    n_boot: int
    ci: float
    positions_note: str = ""  # which positions were used and why (see varying_positions)


PAPER_COMPARISONS = (  # (label, model a, model b, dataset)
    ("θ_b vs θ_u on D_f", "backdoored", "unlearned", "forget"),
    ("θ_b vs θ_o on D_p", "backdoored", "original", "poisoned"),
    ("θ_b vs θ_o on D_r", "backdoored", "original", "retain"),
)


def paper_comparisons(
    trio: Trio,
    data: Mapping[str, Sequence[Sequence[int]]],
    positions: int | Sequence[int] = 0,
    layer: int | None = None,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    batch_size: int = 16,
    padding_side: str = "right",
    norms_cache: dict[tuple, Tensor] | None = None,
) -> NormCorrelation:
    """The three Fig. 5 comparisons; ``data`` maps ``forget`` / ``poisoned`` / ``retain`` to token-id
    lists, ``positions`` are sink positions (e.g. from :class:`~sinkprobe.analysis.sinks.SinkReport`),
    ``layer`` defaults to the last layer. ``norms_cache`` (keyed by the bridge's ``id``, the dataset
    name, the layer and the batching) lets calls on the same ``data`` share the value norms of the
    bridges they have in common (θ_o and θ_u against two θ_b)."""
    missing = {d for *_, d in PAPER_COMPARISONS} - set(data)
    if missing:
        raise ValueError(f"data lacks {sorted(missing)}: give token-id lists for forget, poisoned and retain")
    check_same_family(trio._asdict())
    layer = trio.original.cfg.n_layers - 1 if layer is None else layer % trio.original.cfg.n_layers
    positions = [positions] if isinstance(positions, int) else list(positions)
    kw = dict(batch_size=batch_size, padding_side=padding_side)
    cache = {} if norms_cache is None else norms_cache

    def norms(model: str, dataset: str) -> Tensor:
        bridge = getattr(trio, model)
        key = (id(bridge), dataset, layer, batch_size, padding_side)
        if key not in cache:
            cache[key] = collect_value_norms(bridge, data[dataset], layer, **kw)
        return cache[key]

    rows = [
        {"comparison": label, "model_a": a, "model_b": b, "dataset": d, "layer": layer}
        | norm_correlation(norms(a, d), norms(b, d), p, n_boot=n_boot, ci=ci, seed=seed)
        for label, a, b, d in PAPER_COMPARISONS
        for p in positions
    ]
    return NormCorrelation(table=pd.DataFrame(rows), layer=layer, n_boot=n_boot, ci=ci)
