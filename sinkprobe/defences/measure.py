"""What each defence buys against a backdoored model θ_b, and what it costs: ``defences.{csv,md}``.

For every θ_b and defence, the model is scored as the study scores it — UE and UT on clean
prompts, BE with its trained trigger at its trained placement, on held-out D_f items (headline)
and on the items trained with the trigger (D_p) — with the defence in place on every prompt,
clean ones included: a defence is deployed blind to whether a prompt carries a trigger, so its
cost on UE and UT is part of the measurement. Row ``none`` is the same model undefended.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sinkprobe.data.poison import Trigger
from sinkprobe.data.types import UnlearningCorpus
from sinkprobe.defences.prompts import perturb_prefix, reanchor
from sinkprobe.defences.value_clamp import SinkValueClamp, sink_value_range
from sinkprobe.eval.table import EvalSettings, clean_scores, forget_prompts, summarise, trigger_scores
from sinkprobe.models.io import load_checkpoint, read_run_card
from sinkprobe.pipeline.parts import TableParts, folder_stamp
from sinkprobe.tables import write_csv_md
from sinkprobe.validation import Rule, at_least, check_fields

DEFENCES = ("none", "reanchor", "value_clamp", "perturb")
COLUMNS = ("ue_knowmem", "ue_verbmem", "be_knowmem", "be_verbmem", "be_knowmem_poisoned", "be_verbmem_poisoned",
           "ut_knowmem")  # fmt: skip


@dataclass(frozen=True)
class DefenceSettings:
    anchor: str = "Read the text below."  # neutral: no instruction about the content
    perturb_positions: int = 8  # the first tokens after BOS, where a prefix trigger sits
    perturb_rate: float = 0.5
    n_range_prompts: int = 32  # clean D_f prompts that set the clamp range on θ_o
    sink_positions: tuple[int, ...] = (0,)
    seed: int = 0

    def __post_init__(self) -> None:  # refused before any model is loaded or θ_b reused
        rules = {"anchor": Rule(lambda v: bool(v.strip()), "a non-empty neutral text", names_type=True),
                 "perturb_positions": at_least(1), "perturb_rate": Rule(lambda v: 0 < v <= 1, "in (0, 1]"),
                 "n_range_prompts": at_least(1), "sink_positions": at_least(0), "seed": at_least(0)}  # fmt: skip
        check_fields(self, "defend", rules)


def defences_for(tok, corpus: UnlearningCorpus, original, settings: DefenceSettings) -> dict:
    """name → (prompt transform or None, model wrapper factory or None). The clamp range is
    θ_o's on clean D_f prompts (the model the unlearning started from, which the defender holds)."""
    anchor = tok(settings.anchor, add_special_tokens=False).input_ids
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    low, high = sink_value_range(original, forget_prompts(tok, corpus, None, settings.n_range_prompts),
                                 settings.sink_positions)  # fmt: skip
    return {
        "none": (None, None),
        "reanchor": (reanchor(anchor), None),
        "value_clamp": (None, lambda m: SinkValueClamp(m, low, high, settings.sink_positions)),
        "perturb": (perturb_prefix(settings.perturb_positions, settings.perturb_rate, vocab, settings.seed), None),
    }


def defend_and_score(model, tok, corpus, card: dict, transform, wrap, eval_settings: EvalSettings) -> dict:
    """One θ_b's UE / BE (held-out and poisoned items) / UT under one defence."""
    trigger = Trigger(card["trigger"]["text"], card["trigger"]["placement"])
    poisoned = card["metrics"].get("poisoned_items", {"knowmem": [], "verbmem": []})
    n = {"knowmem": len(corpus.forget.knowmem[: eval_settings.max_items]),
         "verbmem": len(corpus.forget.verbmem[: eval_settings.max_items])}  # fmt: skip
    masks = {k: np.isin(np.arange(n[k]), poisoned[k]) for k in n}
    with wrap(model) if wrap else nullcontext():
        clean = clean_scores(model, tok, corpus, eval_settings, transform)
        triggered = trigger_scores(model, tok, corpus, trigger, eval_settings, transform)
    return summarise(clean, triggered, masks, eval_settings)


def measure_defences(
    folders: list[Path], original: Path, corpus: UnlearningCorpus, settings: DefenceSettings = DefenceSettings(),
    eval_settings: EvalSettings = EvalSettings(progress=True), log=print, parts: TableParts | None = None,
) -> list[dict]:  # fmt: skip
    """One row per θ_b × defence (``none`` scored here too, so every row is read the same way).
    With ``parts``, each θ_b's rows are saved as they finish and reused by a rerun whose key
    (the θ_b, θ_o, the data and the settings) is the same."""
    for folder in folders:
        card = read_run_card(folder)
        if card.get("kind") != "backdoored":
            raise ValueError(f"{folder} is not a backdoored checkpoint (run card kind {card.get('kind')!r})")
    theta_o, tok, defences = None, None, None
    setting = dict(
        original=folder_stamp(original), data=corpus.sha256(), defences=asdict(settings), eval=asdict(eval_settings)
    )
    rows = []
    for folder in folders:
        key = dict(model=folder_stamp(folder), **setting)
        if parts is not None and (saved := parts.get(key)) is not None:
            log(f"{folder.name}: reused from {parts.folder}")
            rows += saved
            continue
        if defences is None:  # θ_o's clamp range, once, and only when something is left to score
            theta_o, tok = load_checkpoint(original)
            defences = defences_for(tok, corpus, theta_o, settings)
        card, done = read_run_card(folder), []
        model, _ = load_checkpoint(folder)
        for name, (transform, wrap) in defences.items():
            t0 = time.perf_counter()
            m = defend_and_score(model, tok, corpus, card, transform, wrap, eval_settings)
            row = {
                "model": folder.name,
                "trigger": card["trigger"]["text"],
                "placement": card["trigger"]["placement"],
                "value_norm": card["config"]["value_norm_weight"],
                "seed": card["config"]["seed"],
                "defence": name,
            }
            row |= {c: m.get(c) for c in COLUMNS} | {"seconds": round(time.perf_counter() - t0, 1)}
            done.append(row)
            log(f"{folder.name} / {name}: BE KM {row['be_knowmem']} VM {row['be_verbmem']} | UT {row['ut_knowmem']}")
        if parts is not None:
            parts.put(key, done)
        rows += done
    return rows


HEADERS = {"ue_knowmem": "UE KM ↓", "ue_verbmem": "UE VM ↓", "be_knowmem": "BE KM held-out",
           "be_verbmem": "BE VM held-out", "be_knowmem_poisoned": "BE KM D_p", "be_verbmem_poisoned": "BE VM D_p",
           "ut_knowmem": "UT KM ↑"}  # fmt: skip


def write_defences(rows: list[dict], stem: Path, title: str) -> tuple[Path, Path]:
    """``stem.csv`` and ``stem.md``: one row per θ_b × defence; returns their paths."""
    frame = pd.DataFrame(rows)[["model", "placement", "value_norm", "seed", "defence", *COLUMNS, "seconds"]]
    return write_csv_md(frame, stem, title, headers={"model": "θ_b", "value_norm": "λ", "seconds": "s", **HEADERS})
