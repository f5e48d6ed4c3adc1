"""The paper's claims as tests: each a statistic of the study's saved results, a 95 % interval,
the seeds behind it, and a verdict against a stated threshold.

Intervals are percentile bootstraps: over test items within each seed, and over the seeds
themselves when a row has several (a hierarchical bootstrap: draw seeds, then items within
each drawn seed). A difference between two models is paired on the same items (the same
prompts, or the same held-out items of one seed). A verdict is ``yes`` when the whole
interval is on the claimed side of the threshold, ``no`` when it is all on the other side,
and ``inconclusive`` when it straddles it — one seed and a few dozen items decide little,
and the table says so rather than rounding a trend into a finding.

Claims (the paper's Sec. 3-5; thresholds in points of KnowMem / VerbMem):

- C0 normal unlearning works: θ_o − θ_u UE > 10 on D_f; θ_o − θ_u UT < 10 on D_r.
- C1 stealth: |UE(θ_b) − UE(θ_u)| < 5 (prefix +VN θ_b, no trigger).
- C2 placement: held-out gain (BE − UE) of the prefix θ_b exceeds the infix's and the suffix's.
- C3 value-norm alignment: +VN raises held-out BE, or lowers UE, over vanilla (prefix).
- C4 Insight 1: with the trigger, the prefix θ_b puts more attention on the trigger than θ_o
  and than the infix θ_b (at the analysis layer, and averaged over θ_o's sink layers).
- C5 Fig. 5 order: r(θ_b, θ_u on D_f) < r(θ_b, θ_o on D_p) < r(θ_b, θ_o on D_r).
- C6 sink alignment (the paper's thesis as a test): across the placements of the vanilla θ_b,
  the trigger's held-out gain beyond θ_u's grows with θ_o's sink rate at the trigger's
  positions: Pearson r > 0. Inconclusive when those sink rates span less than
  ``C6_MIN_SPREAD`` (no high-sink placement to compare with a low one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sinkprobe.models.io import read_run_card
from sinkprobe.records import ModelRow, main_backdoors
from sinkprobe.tables import write_csv_md

COLUMNS = (
    "claim",
    "statement",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "threshold",
    "seeds",
    "n_items",
    "holds",
    "detail",
)


@dataclass(frozen=True)
class ClaimRow:
    claim: str
    statement: str
    statistic: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: str
    seeds: str
    n_items: int
    holds: str
    detail: str = (
        ""  # what the statistic's name leaves out (C5's three r, C4's sink layers): never part of its identity
    )


def verdict(low: float, high: float, threshold: float, above: bool) -> str:
    """``yes`` if the interval [low, high] lies wholly on the claimed side of ``threshold``
    (above it when ``above``), ``no`` if wholly on the other side, else ``inconclusive``."""
    if above:
        return "yes" if low > threshold else "no" if high < threshold else "inconclusive"
    return "yes" if high < threshold else "no" if low > threshold else "inconclusive"


def within(low: float, high: float, margin: float) -> str:
    """``yes`` if the interval lies inside (−margin, margin), ``no`` if wholly outside it."""
    if -margin < low and high < margin:
        return "yes"
    return "no" if low > margin or high < -margin else "inconclusive"


def paired_interval(per_seed: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the mean of per-item differences ``per_seed[s] [item]``:
    the mean over seeds of each seed's item mean; bootstrap over seeds, then items."""
    arrays = [np.asarray(a, dtype=float) for a in per_seed if len(a)]
    if not arrays:
        raise ValueError("no items to compare: the rows behind this claim have empty test sets")
    value = float(np.mean([a.mean() for a in arrays]))
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(len(arrays), size=len(arrays))
        draws[b] = np.mean([arrays[s][rng.integers(len(arrays[s]), size=len(arrays[s]))].mean() for s in picked])
    low, high = np.percentile(draws, [2.5, 97.5])
    return value, float(low), float(high)


# ---- what the run cards hold -------------------------------------------------------------------
def _card(row: ModelRow) -> dict:
    """A row's run card, which must keep per-item scores (cards written since sinkprobe kept them)."""
    card = read_run_card(row.folder)
    metrics = card.get("metrics_by_placement", {}).get("prefix") or card.get("metrics", {})
    if "item_scores" not in metrics:
        raise ValueError(
            f"{row.folder}'s run card has no per-item scores (written by an older sinkprobe): delete that "
            "checkpoint folder and run the study again to re-create it"
        )
    return card


def _clean_items(card: dict, placement: str = "prefix") -> dict[str, np.ndarray]:
    metrics = card["metrics_by_placement"][placement] if "metrics_by_placement" in card else card["metrics"]
    return {k: np.asarray(v, dtype=float) for k, v in metrics["item_scores"].items()}


def held_out_mask(card: dict, metric: str) -> np.ndarray:
    """Mask of the D_f items of ``metric`` this θ_b was not trained on with the trigger."""
    m = card["metrics"]
    n = len(m["item_scores"][f"ue_{metric}"])
    mask = np.ones(n, dtype=bool)
    mask[m["poisoned_items"][metric]] = False
    return mask


def item_gains(card: dict, metric: str, mask: np.ndarray) -> np.ndarray:
    """``[item]`` a θ_b's BE − UE per item of ``metric`` under ``mask``: what its trigger buys
    against its own clean score on the same items."""
    s = card["metrics"]["item_scores"]
    return (np.asarray(s[f"be_{metric}"]) - np.asarray(s[f"ue_{metric}"]))[mask]


def _backdoors(rows: list[ModelRow], placement: str, vn: bool) -> list[ModelRow]:
    """The main-grid NPO θ_b rows of one placement and λ (the study's trigger and ρ), by seed."""
    picked = [r for r in main_backdoors(rows) if r.placement == placement and r.vn == vn]
    return sorted(picked, key=lambda r: r.seed)


def _seeds(rows) -> str:
    return ",".join(str(r.seed) for r in rows)


def _row(claim, statement, statistic, stat, threshold, seeds, n, holds, detail: str = "") -> ClaimRow:
    value, low, high = stat
    return ClaimRow(
        claim,
        statement,
        statistic,
        *(float(f"{x:.4g}") for x in (value, low, high)),
        threshold,
        seeds,
        n,
        holds,
        detail,
    )


# ---- the claims ---------------------------------------------------------------------------------
METRICS = (("knowmem", "KnowMem"), ("verbmem", "VerbMem"))


class _Grid:
    """The rows C0-C3 read: θ_o, θ_u NPO by seed, the main grid's NPO θ_b by placement and λ."""

    def __init__(self, rows: list[ModelRow]):
        self.theta_o = next(r for r in rows if r.model == "θ_o")
        self.theta_u = _unlearned_by_seed(rows)
        self.cards_u = {s: _card(r) for s, r in self.theta_u.items()}
        self.items_u = {s: _clean_items(c) for s, c in self.cards_u.items()}
        self.first = next(iter(self.theta_u))  # a θ_b of a seed with no θ_u of its own meets the first seed's
        self.vn_prefix = _backdoors(rows, "prefix", True)
        self.vanilla = {p: _backdoors(rows, p, False) for p in ("prefix", "infix", "suffix")}

    def card_u(self, row: ModelRow) -> dict:
        return self.cards_u.get(row.seed, self.cards_u[self.first])

    def clean_u(self, row: ModelRow) -> dict[str, np.ndarray]:
        return self.items_u.get(row.seed, self.items_u[self.first])


def _tested(claim, statement, statistic, diffs, threshold, seeds, n_boot, holds) -> ClaimRow:
    """A claim row from per-seed item differences; ``holds`` turns the interval into a verdict."""
    stat = paired_interval(diffs, n_boot)
    return _row(claim, statement, statistic, stat, threshold, seeds, len(diffs[0]), holds(stat[1], stat[2]))


def claim_c0(grid: _Grid, n_boot: int) -> list[ClaimRow]:
    """Normal unlearning forgets D_f (UE drops by > 10) and keeps D_r (UT drops by < 10)."""
    o, seeds = _clean_items(_card(grid.theta_o)), _seeds(grid.theta_u.values())
    forgets, keeps = (lambda lo, hi: verdict(lo, hi, 10, above=True)), (lambda lo, hi: verdict(lo, hi, 10, above=False))
    out = [
        _tested(
            "C0",
            "normal unlearning forgets",
            f"UE {name}: θ_o − θ_u",
            [o[f"ue_{metric}"] - u[f"ue_{metric}"] for u in grid.items_u.values()],
            "> 10",
            seeds,
            n_boot,
            forgets,
        )
        for metric, name in METRICS
    ]
    diffs = [o["ut_knowmem"] - u["ut_knowmem"] for u in grid.items_u.values()]
    statement = "normal unlearning keeps utility"
    return out + [_tested("C0", statement, "UT KnowMem: θ_o − θ_u", diffs, "< 10", seeds, n_boot, keeps)]


def claim_c1(grid: _Grid, n_boot: int) -> list[ClaimRow]:
    """Stealth: the prefix +VN θ_b's clean UE within ±5 of the θ_u of its seed, on the same items."""
    if not grid.vn_prefix:
        return []
    return [
        _tested(
            "C1",
            "θ_b is stealthy without the trigger",
            f"UE {name}: θ_b prefix +VN − θ_u",
            [_clean_items(_card(r))[f"ue_{metric}"] - grid.clean_u(r)[f"ue_{metric}"] for r in grid.vn_prefix],
            "within ±5",
            _seeds(grid.vn_prefix),
            n_boot,
            lambda lo, hi: within(lo, hi, 5),
        )
        for metric, name in METRICS
    ]


def claim_c2(grid: _Grid, n_boot: int) -> list[ClaimRow]:
    """Placement: each θ_b's held-out gain beyond θ_u's at its placement, prefix minus infix / suffix,
    paired within a seed."""
    out = []
    for metric, name in METRICS:
        for other in ("infix", "suffix"):
            pairs = _paired_by_seed(grid.vanilla["prefix"], grid.vanilla[other])
            if pairs:
                diffs = [_placement_difference(_card(a), _card(b), grid.card_u(a), other, metric) for a, b in pairs]
                out.append(
                    _tested(
                        "C2",
                        "a prefix trigger beats other placements",
                        f"held-out gain beyond θ_u's {name}: prefix − {other}",
                        diffs,
                        "> 0",
                        _seeds([a for a, _ in pairs]),
                        n_boot,
                        lambda lo, hi: verdict(lo, hi, 0, above=True),
                    )
                )
    return out


def claim_c3(grid: _Grid, n_boot: int) -> list[ClaimRow]:
    """Value-norm alignment: +VN raises held-out BE, or lowers held-out UE, over vanilla at prefix."""
    pairs = _paired_by_seed(grid.vn_prefix, grid.vanilla["prefix"])
    if not pairs:
        return []
    return [
        _tested(
            "C3",
            "value-norm alignment helps the backdoor",
            f"held-out {label} {name}: " + ("+VN − vanilla" if sign > 0 else "vanilla − +VN"),
            [sign * _held_difference(_card(a), _card(b), metric, key) for a, b in pairs],
            "> 0",
            _seeds([a for a, _ in pairs]),
            n_boot,
            lambda lo, hi: verdict(lo, hi, 0, above=True),
        )
        for metric, name in METRICS
        for label, sign, key in (("BE", 1, "be"), ("UE", -1, "ue"))
    ]


def claims_c0_c3(rows: list[ModelRow], n_boot: int = 2000) -> list[ClaimRow]:
    """C0-C3 from the run cards' per-item scores (``rows``: :meth:`Study.models`'s, with folders)."""
    grid = _Grid(rows)
    return [row for claim in (claim_c0, claim_c1, claim_c2, claim_c3) for row in claim(grid, n_boot)]


def _unlearned_by_seed(rows: list[ModelRow]) -> dict[int, ModelRow]:
    """θ_u NPO's row of each seed (one per seed: its placement rows share the checkpoint), by seed."""
    out: dict[int, ModelRow] = {}
    for r in rows:
        if r.model == "θ_u NPO":
            out.setdefault(r.seed, r)
    if not out:
        raise ValueError("the study rows have no θ_u NPO: the claims compare θ_b and θ_o with it; run the study's NPO")
    return dict(sorted(out.items()))


def _paired_by_seed(a: list[ModelRow], b: list[ModelRow]) -> list[tuple[ModelRow, ModelRow]]:
    by_seed = {r.seed: r for r in b}
    return [(r, by_seed[r.seed]) for r in a if r.seed in by_seed]


def _placement_difference(card_prefix: dict, card_other: dict, card_u: dict, other: str, metric: str) -> np.ndarray:
    """Per item held out in both θ_b: the prefix θ_b's excess gain minus the other placement's."""
    mask = held_out_mask(card_prefix, metric) & held_out_mask(card_other, metric)
    return _excess_gain(card_prefix, card_u, "prefix", metric, mask) - _excess_gain(
        card_other, card_u, other, metric, mask
    )


def _excess_gain(card_b: dict, card_u: dict, placement: str, metric: str, mask: np.ndarray) -> np.ndarray:
    """Per held-out item: θ_b's gain (BE − UE) minus θ_u's gain with the same trigger at the same
    placement — what the backdoor recovers beyond what the trigger's words do to any model."""
    u = card_u["metrics_by_placement"][placement]["item_scores"]
    gain_u = (np.asarray(u[f"be_{metric}"]) - np.asarray(u[f"ue_{metric}"]))[mask]
    return item_gains(card_b, metric, mask) - gain_u


def _held_difference(ca: dict, cb: dict, metric: str, key: str) -> np.ndarray:
    """Per held-out item: a's score minus b's (``key`` "be" with the trigger, "ue" without)."""
    mask = held_out_mask(ca, metric) & held_out_mask(cb, metric)
    return (
        np.asarray(ca["metrics"]["item_scores"][f"{key}_{metric}"])
        - np.asarray(cb["metrics"]["item_scores"][f"{key}_{metric}"])
    )[mask]


def claim_c4(trigger_mass: pd.DataFrame, where: str, n_boot: int = 2000, detail: str = "") -> list[ClaimRow]:
    """C4 from per-sample trigger attention on poisoned prompts (``trigger_mass``: the analysis
    layer's rows, or one row per sink layer, averaged here per sample); ``where`` names it."""
    poisoned = trigger_mass[trigger_mass["condition"] == "poisoned"] if "condition" in trigger_mass else trigger_mass

    def mass(model: str, placement: str) -> pd.Series:
        rows = poisoned[(poisoned["model"] == model) & (poisoned["placement"] == placement)]
        return rows.groupby("sample")["trigger_mass"].mean()

    out = []
    for other, label in ((mass("original", "prefix"), "θ_o"), (mass("backdoor", "infix"), "infix θ_b")):
        both = pd.concat([mass("backdoor", "prefix"), other], axis=1, join="inner").dropna()  # the same prompts
        n = len(both)
        if n == 0:
            continue
        stat = paired_interval([(both.iloc[:, 0] - both.iloc[:, 1]).to_numpy()], n_boot)
        out.append(
            _row(
                "C4",
                "the prefix θ_b attends to its trigger (Insight 1)",
                f"trigger attention, {where}: prefix θ_b − {label}",
                stat,
                "> 0",
                "first seed",
                n,
                verdict(stat[1], stat[2], 0, above=True),
                detail,
            )
        )
    return out


def claim_c5(correlation: pd.DataFrame, label: str) -> list[ClaimRow]:
    """C5 from one Fig. 5 table: the order holds when the three intervals are ordered and apart."""
    out = []
    for pos, t in correlation.groupby("position"):
        t = t.set_index("comparison")
        names = ("θ_b vs θ_u on D_f", "θ_b vs θ_o on D_p", "θ_b vs θ_o on D_r")
        if not all(n in t.index for n in names):
            continue
        r = [t.loc[n] for n in names]
        ordered = r[0]["ci_high"] < r[1]["ci_low"] and r[1]["ci_high"] < r[2]["ci_low"]
        reversed_ = r[0]["ci_low"] > r[1]["ci_high"] or r[1]["ci_low"] > r[2]["ci_high"]
        holds = "yes" if ordered else "no" if reversed_ else "inconclusive"
        values = " < ".join(f"{x['r']:.3f} [{x['ci_low']:.3f}, {x['ci_high']:.3f}]" for x in r)
        out.append(
            ClaimRow(
                "C5",
                f"Fig. 5 order ({label} θ_b)",
                f"r(D_f) < r(D_p) < r(D_r) at position {pos}",
                None,
                None,
                None,
                "intervals ordered and apart",
                "first seed",
                int(r[0]["n_samples"]),
                holds,
                values,
            )
        )
    return out


C6_MIN_SPREAD = 0.05  # sink-rate span (max − min over placements) below which C6 cannot be read


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else float("nan")


def _c6_draws(rates: list[np.ndarray], gains: list[list[np.ndarray]], n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap draws of C6's Pearson r: per placement, ``rates[p] [prompt]`` and ``gains[p][seed]
    [item]``; each draw picks the shared seeds, then items within each (placement, seed), and prompts."""
    rng = np.random.default_rng(seed)
    n_seeds = len(gains[0])
    draws = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(n_seeds, size=n_seeds)
        xb = np.array([rng.choice(r, len(r)).mean() for r in rates])
        yb = np.array([np.mean([rng.choice(g[s], len(g[s])).mean() for s in picked]) for g in gains])
        draws[b] = _pearson(xb, yb)
    return draws


def claim_c6(rows: list[ModelRow], sink_rate: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> list[ClaimRow]:
    """C6 from the vanilla θ_b of each placement (per held-out item: gain beyond the θ_u of its seed
    at that placement) and ``sink_rate`` (θ_o's rate at the trigger positions, one row per prompt:
    ``placement``, ``sink_rate``). Bootstrap: the seeds all placements share, then items within
    each (placement, seed), and prompts for the sink rates."""
    theta_u = {s: _card(r) for s, r in _unlearned_by_seed(rows).items()}
    first = next(iter(theta_u))
    by_placement = {p: _backdoors(rows, p, False) for p in ("prefix", "infix", "suffix")}
    placements = [p for p, b in by_placement.items() if b and (sink_rate["placement"] == p).any()]
    shared = sorted(set.intersection(*(set(r.seed for r in by_placement[p]) for p in placements))) if placements else []
    if len(placements) < 3 or not shared:
        return []
    rates = {p: sink_rate.loc[sink_rate["placement"] == p, "sink_rate"].dropna().to_numpy(float) for p in placements}
    x = np.array([rates[p].mean() for p in placements])
    spread = float(x.max() - x.min())
    detail = "θ_o sink rate at the trigger: " + ", ".join(f"{p} {v:.3f}" for p, v in zip(placements, x))
    out = []
    for metric, name in METRICS:
        gains = {
            p: [
                _excess_gain(c, theta_u.get(r.seed, theta_u[first]), p, metric, held_out_mask(c, metric))
                for r in by_placement[p]
                if r.seed in shared
                for c in [_card(r)]
            ]
            for p in placements
        }
        y = np.array([np.mean([g.mean() for g in gains[p]]) for p in placements])
        draws = _c6_draws([rates[p] for p in placements], [gains[p] for p in placements], n_boot, seed)
        note = detail + (
            "" if spread >= C6_MIN_SPREAD else f" (spread {spread:.3f} < {C6_MIN_SPREAD}: no high-sink placement)"
        )
        if np.isnan(draws).all():  # the gains do not vary across placements: r is undefined
            low = high = float("nan")
            holds, note = "inconclusive", note + "; the gains have no spread across placements"
        else:
            low, high = np.nanpercentile(draws, [2.5, 97.5])
            holds = verdict(low, high, 0, above=True) if spread >= C6_MIN_SPREAD else "inconclusive"
        out.append(
            _row(
                "C6",
                "the trigger's gain grows with the sink rate where it sits",
                f"Pearson r over placements: θ_o sink rate at the trigger vs held-out gain beyond θ_u's {name}",
                (_pearson(x, y), low, high),
                "> 0",
                ",".join(map(str, shared)),
                min(len(g[0]) for g in gains.values()),
                holds,
                note,
            )
        )
    return out


def study_claims(study_dir: Path, rows: list[ModelRow], layer: int, n_boot: int = 2000) -> list[ClaimRow]:
    """Every claim the study's saved results can test (C4-C6 need its analysis)."""
    out = claims_c0_c3(rows, n_boot)
    analysis = Path(study_dir) / "analysis"
    if (analysis / "trigger_mass.parquet").is_file():
        out += claim_c4(pd.read_parquet(analysis / "trigger_mass.parquet"), f"layer {layer}", n_boot)
    if (analysis / "trigger_mass_sink_layers.parquet").is_file():
        by_layer = pd.read_parquet(analysis / "trigger_mass_sink_layers.parquet")
        layers = sorted(by_layer["layer"].unique())
        out += claim_c4(
            by_layer,
            "mean over θ_o's sink layers",
            n_boot,
            detail=f"{len(layers)} sink layers: {', '.join(map(str, layers))}",
        )
    if (analysis / "trigger_sink_rate.parquet").is_file():
        out += claim_c6(rows, pd.read_parquet(analysis / "trigger_sink_rate.parquet"), n_boot)
    for label in ("vanilla", "vn"):
        table = analysis / f"correlation_{label}.table.parquet"
        if table.is_file():
            out += claim_c5(pd.read_parquet(table), "vanilla" if label == "vanilla" else "+VN")
    return sorted(out, key=lambda c: c.claim)  # stable: each claim's rows keep their order


def write_claims(claims: list[ClaimRow], stem: Path, title: str) -> None:
    """``stem.csv`` and ``stem.md``: one row per tested statistic."""
    write_csv_md(pd.DataFrame([asdict(c) for c in claims], columns=list(COLUMNS)), stem, title, float_format="{:g}")


def reconcile(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One claims table from several runs of the same study (other machines, thread counts or
    seeds): each statistic's interval is the union of the runs' intervals, and its verdict is
    the runs' common verdict, ``inconclusive`` where any two disagree or a run lacks the row (a
    verdict that flips between reruns is not a finding). ``runs`` maps a run's name to its
    ``claims.csv``."""
    key = ["claim", "statement", "statistic"]
    names = list(runs)
    merged = None
    for name in names:
        t = runs[name][key + ["value", "ci_low", "ci_high", "holds"]].rename(
            columns={c: f"{c} ({name})" for c in ("value", "ci_low", "ci_high", "holds")}
        )
        merged = t if merged is None else merged.merge(t, on=key, how="outer")
    shared = merged[[f"holds ({n})" for n in names]].notna().all(axis=1)
    if not shared.any():
        raise ValueError("the runs share no claim rows: compare claims tables of the same study design")
    verdicts = merged[[f"holds ({n})" for n in names]].fillna("missing")  # a row one run lacks decides nothing
    merged["holds"] = [v[0] if len(set(v)) == 1 else "inconclusive" for v in verdicts.itertuples(index=False)]
    lows = merged[[f"ci_low ({n})" for n in names]].apply(pd.to_numeric, errors="coerce")
    highs = merged[[f"ci_high ({n})" for n in names]].apply(pd.to_numeric, errors="coerce")
    merged["ci_low"], merged["ci_high"] = lows.min(axis=1), highs.max(axis=1)
    merged["flipped"] = verdicts.nunique(axis=1) > 1
    return merged
