"""The analyses of a finished study: sinks, poisoned-vs-clean pairs, value-norm correlations.

Reads the study's checkpoints once and writes ``study_dir/analysis/`` with
:func:`~sinkprobe.analysis.save_result` / :func:`~sinkprobe.analysis.save_table` (atomic; a
result's JSON goes last), so figures, the report and the notebooks regenerate from these
files without a model:

- ``sinks_{original,backdoor_prefix,backdoor_prefix_vn}`` (:class:`SinkReport`) and the tidy
  ``sink_rate.parquet`` (layer × key) / ``sink_alpha.parquet`` (layer × head × key), on
  clean D_f KnowMem prompts;
- ``pairs_{original,backdoor}_{prefix,infix}`` (:class:`PairAnalysis`, paper Fig. 3 and 4):
  clean vs poisoned D_f prompts at the analysis layer (default the last), the trigger at the placement the θ_b was
  trained with (θ_o is read under both placements, as in Fig. 3a/3c); the tidy
  ``logits.parquet``, ``trigger_mass.parquet``, ``delta_attention_heads.parquet`` (ΔA per
  head) and ``trigger_mass_sink_layers.parquet`` (the
  trigger attention on poisoned prompts at each of θ_o's sink layers);
- ``trigger_sink_rate.parquet``: θ_o's sink rate at the trigger's positions, with the
  trigger at each placement the study's θ_b were trained at (claim C6);
- ``correlation_{vanilla,vn}`` (:class:`NormCorrelation`, Fig. 5): θ_b (prefix) vs θ_u on
  D_f, vs θ_o on D_p, vs θ_o on D_r, at the sink positions S where ‖v‖ varies across samples
  (:func:`~sinkprobe.analysis.varying_positions`), with bootstrap CIs;
- ``summary.json`` / ``summary.md``: the numbers that answer the paper's three insights,
  computed by :func:`summarise` from the saved results alone. ``summary.json`` is written
  last and carries the analysis key: a summary with the same key means a finished analysis,
  which a re-run reuses.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from sinkprobe.analysis import (
    NormCorrelation,
    PairAnalysis,
    PoisonedPairs,
    SinkReport,
    analyse_pairs,
    describe_run,
    detect_sinks,
    load_result,
    load_run,
    paper_comparisons,
    save_result,
    save_table,
    sink_rate_at,
    varying_positions,
)
from sinkprobe.data.poison import DEFAULT_TRIGGER, Trigger, build_ids, samples_from_passages
from sinkprobe.data.sources import load_corpus
from sinkprobe.data.types import UnlearningCorpus
from sinkprobe.eval.memorization import knowmem_prompt
from sinkprobe.eval.table import forget_prompts, prompt_encoder
from sinkprobe.keys import content_key
from sinkprobe.layout import StudyLayout
from sinkprobe.models.hooked import Trio, open_bridge
from sinkprobe.models.io import atomic_write_json, atomic_write_text, read_run_card
from sinkprobe.records import CONTRASTED_PLACEMENTS, ModelRow, main_backdoors, main_trigger

FALLBACK_SINKS = (0, 1, 2, 3)  # S when no key passes the sink-rate threshold (small models)
SINK_THRESHOLD = 0.5
SINK_LAYER_RATE = 0.5  # a sink layer: α(0) > ε in more than half its heads (the issue's and Gu et al.'s reading)
# Bump when what the analysis computes changes, so a finished analysis folder is redone.
# 2: whole-string trigger placement, Fig. 5 on varying positions; 3: trigger attention at the sink layers;
# 4: θ_o's sink rate at the trigger positions (claim C6), ΔA per head; 5: the pair analysis saves ΔA per
# head and the sink layers' trigger mass (one forward per model instead of three)
ANALYSIS_VERSION = 5


# ---- which checkpoints ---------------------------------------------------------------------
def select_models(rows: list[ModelRow]) -> dict[str, ModelRow]:
    """The rows the analysis reads: ``original``, ``unlearned`` (θ_u NPO) and the first-seed NPO
    θ_b rows ``backdoor_prefix``, ``backdoor_prefix_vn``, ``backdoor_infix`` (the last two only
    when the study has them)."""
    original = [r for r in rows if r.method is None and r.trigger is None]
    unlearned = [r for r in rows if r.method == "npo" and r.trigger is None]
    if not original or not unlearned:
        raise ValueError(
            "the study rows lack θ_o or θ_u NPO: pass the rows Study.models() returns for a finished study"
        )
    backdoor = main_backdoors(rows)
    out = {"original": original[0], "unlearned": unlearned[0]}
    for placement in CONTRASTED_PLACEMENTS:
        for vn, suffix in ((False, ""), (True, "_vn")):
            match = [r for r in backdoor if r.placement == placement and r.vn == vn]
            if match:
                out[f"backdoor_{placement}{suffix}"] = min(match, key=lambda r: r.seed)
    if "backdoor_prefix" not in out:
        raise ValueError(
            "the study rows have no vanilla NPO-Backdoor with a prefix trigger: the paper's analyses need it; "
            "add 'prefix' to the study's placements"
        )
    return out


def trained_placements(rows: list[ModelRow]) -> list:
    """The placements of the main sweep's NPO θ_b, in the order the study lists them."""
    return list(dict.fromkeys(r.placement for r in main_backdoors(rows)))


def trained_trigger(folder: Path) -> Trigger:
    """The trigger a θ_b was trained with, from its run card (the record of what training used)."""
    card = read_run_card(folder)
    trig = card.get("trigger") or {}
    if not trig.get("trained"):
        raise ValueError(f"{folder} is not a backdoored checkpoint (its run card records no trained trigger)")
    return Trigger(trig["text"], trig["placement"])


# ---- inputs --------------------------------------------------------------------------------
def poisoned_pairs(tok, corpus: UnlearningCorpus, trigger: Trigger, n: int) -> PoisonedPairs:
    """D_f KnowMem prompts with ``trigger`` exactly as evaluated (BE), each paired with itself
    minus the trigger's tokens: x′ and x differ by the trigger alone. That is the clean prompt
    itself for an infix or suffix trigger; after a prefix trigger a byte-level tokenizer writes
    the next word with its separating space ("ĠQuestion"), which the clean partner keeps."""
    encode = prompt_encoder(tok, trigger)
    parts = [knowmem_prompt(q.question, corpus.forget.knowmem_icl) for q in corpus.forget.knowmem[:n]]
    built = [build_ids(tok, p.prompt, context=p.context, tail=p.tail, trigger=trigger) for p in parts]
    poisoned = [encode(p) for p in parts]
    clean = [[t for j, t in enumerate(ids) if j not in b.trigger_positions] for ids, b in zip(poisoned, built)]
    return PoisonedPairs(clean, poisoned, [b.trigger_positions for b in built])


def retain_prompts(tok, corpus: UnlearningCorpus, n: int) -> list[list[int]]:
    """D_r inputs: clean retain KnowMem prompts, as UT evaluates them."""
    encode = prompt_encoder(tok, None)
    return [encode(knowmem_prompt(q.question, corpus.retain.knowmem_icl)) for q in corpus.retain.knowmem[:n]]


def passage_inputs(tok, passages, trigger: Trigger | None, n: int) -> list[list[int]]:
    """Fig. 5 inputs: the book's prose passages as unlearning trains on them (BOS + text, the
    trigger placed by :func:`build_ids`). Unlike KnowMem prompts, which all open with the same
    few-shot context, they differ from the first token after BOS on, so the value norms at
    the sink positions vary across samples, as on the paper's MUSE-Books chunks."""
    prose = [s for s in samples_from_passages(passages) if s.score_prompt][:n]
    return [build_ids(tok, s.prompt, tail=s.completion, trigger=trigger).ids for s in prose]


# ---- the analysis --------------------------------------------------------------------------
def analysis_key(
    models: dict[str, ModelRow], n_samples: int, n_boot: int, layer: int | None = None, placements: Sequence = ()
) -> str:
    parts = {name: read_run_card(row.folder).get("stage_key", str(row.folder)) for name, row in models.items()}
    return content_key(parts, n_samples, n_boot, ANALYSIS_VERSION, layer, [str(p) for p in placements])


def analyse_study(
    study_dir: Path,
    rows: list[ModelRow],
    n_samples: int = 64,
    *,
    n_boot: int = 1000,
    layer: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write ``study_dir/analysis/`` (see the module docstring) from the rows of
    :meth:`Study.models`; returns the folder. ``layer``: where ΔA, trigger attention and the
    value-norm correlations are read (default: the last, as the paper's "layer 31" of 32;
    negative counts from the end). A finished analysis with the same key is reused."""
    study_dir = Path(study_dir)
    out = StudyLayout(study_dir).analysis
    models = select_models(rows)
    key = analysis_key(models, n_samples, n_boot, layer, trained_placements(rows))
    summary = out / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("key") == key:
        log(f"analysis: reusing {out}")
        return out
    corpus = load_corpus("embedded", study_dir)
    bridges = {name: open_bridge(row.folder) for name, row in models.items()}
    tok = bridges["original"].tokenizer
    clean = forget_prompts(tok, corpus, None, n_samples)
    layer = (bridges["original"].cfg.n_layers - 1 if layer is None else layer) % bridges["original"].cfg.n_layers

    sink_positions, sink_layers = _sinks(bridges, clean, out, layer)
    triggers = _pairs(bridges, models, tok, corpus, n_samples, out, layer, sink_layers)
    trigger_text = main_trigger(rows) or DEFAULT_TRIGGER
    _trigger_sink_rates(
        bridges["original"], tok, corpus, Trigger(trigger_text, "prefix"), trained_placements(rows), n_samples, out
    )
    _correlations(bridges, tok, corpus, triggers["prefix"], sink_positions, n_samples, n_boot, out, layer)

    numbers = summarise(out)
    numbers.update(
        key=key,
        n_samples=len(clean),
        models={name: str(row.folder) for name, row in models.items()},
        triggers={p: {"text": t.text, "placement": t.placement} for p, t in triggers.items()},
    )
    atomic_write_text(out / "summary.md", summary_markdown(numbers))
    atomic_write_json(summary, numbers)
    log(f"analysis: written to {out} ({len(clean)} D_f prompts, layer {numbers['layer']}, S = {sink_positions})")
    return out


def _sinks(bridges: dict, clean: list[list[int]], out: Path, layer: int) -> tuple[list[int], list[int]]:
    """Sink scores of θ_o and the prefix θ_b; returns S (θ_o's sinks at ``layer``, or the first
    positions) and θ_o's sink layers (first-token sink rate above one half)."""
    reports = {}
    for name in ("original", "backdoor_prefix", "backdoor_prefix_vn"):
        if name in bridges:
            reports[name] = detect_sinks(bridges[name], clean, model=name)
            save_result(
                reports[name],
                out,
                f"sinks_{name}",
                describe_run({name: bridges[name]}, inputs="clean D_f KnowMem prompts", n=len(clean)),
            )
    save_table(pd.concat([r.rate_table() for r in reports.values()], ignore_index=True), out / "sink_rate.parquet")
    save_table(pd.concat([r.score_table() for r in reports.values()], ignore_index=True), out / "sink_alpha.parquet")
    shortest = min(len(s) for s in clean)
    detected = [p for p in reports["original"].positions(SINK_THRESHOLD, layers=[layer]) if p < shortest]
    sink_layers = [l for l, r in enumerate(reports["original"].rate[:, 0].tolist()) if r > SINK_LAYER_RATE]
    return detected or list(FALLBACK_SINKS), sink_layers


def _pairs(
    bridges: dict, models: dict, tok, corpus: UnlearningCorpus, n: int, out: Path, layer: int, sink_layers: list[int]
) -> dict[str, Trigger]:
    """Fig. 3 / 4 pairs for θ_o and θ_b under each trained placement, and the trigger attention at
    θ_o's sink layers; returns the triggers used."""
    triggers, logits, mass, by_layer, heads = {}, [], [], [], []
    for placement in CONTRASTED_PLACEMENTS:
        name = f"backdoor_{placement}"
        if name not in models:
            continue
        trigger = triggers[placement] = trained_trigger(models[name].folder)
        pairs = poisoned_pairs(tok, corpus, trigger, n)
        for model in ("original", "backdoor"):
            bridge = bridges["original" if model == "original" else name]
            result = analyse_pairs(bridge, pairs, layer, sink_layers=sink_layers, model=model)
            run = describe_run(
                {model: bridge},
                trigger=trigger.text,
                placement=trigger.placement,
                n=len(pairs.clean),
                inputs="D_f KnowMem prompts",
            )
            save_result(result, out, f"pairs_{model}_{placement}", run)
            logits.append(result.logit_table().assign(placement=placement))
            mass.append(result.trigger_mass_table().assign(placement=placement))
            heads.append(_per_head_table(result.delta_raw_per_head).assign(model=model, placement=placement))
            by_layer.append(_by_layer_table(result).assign(model=model, placement=placement))
    save_table(pd.concat(logits, ignore_index=True), out / "logits.parquet")
    save_table(pd.concat(mass, ignore_index=True), out / "trigger_mass.parquet")
    save_table(pd.concat(heads, ignore_index=True), out / "delta_attention_heads.parquet")
    if sink_layers:  # poisoned prompts only: Insight 1 across the sink layers (claim C4)
        save_table(pd.concat(by_layer, ignore_index=True), out / "trigger_mass_sink_layers.parquet")
    else:  # no sink layer: an earlier analysis' table must not stand in for this one
        (out / "trigger_mass_sink_layers.parquet").unlink(missing_ok=True)
    return triggers


def _per_head_table(per_head: torch.Tensor) -> pd.DataFrame:
    """``[head q k]`` ΔA -> tidy rows: head, query, key, delta."""
    h, q, k = torch.meshgrid(*(torch.arange(n) for n in per_head.shape), indexing="ij")
    columns = {"head": h, "query": q, "key": k, "delta": per_head}
    return pd.DataFrame({c: t.flatten().numpy() for c, t in columns.items()})


def _by_layer_table(result: PairAnalysis) -> pd.DataFrame:
    """The poisoned copies' trigger mass at each sink layer -> tidy rows: sample, layer, trigger_mass."""
    m = result.trigger_mass_by_layer  # [n layer]
    return pd.DataFrame(
        [
            {"sample": i, "layer": l, "trigger_mass": float(m[i, j])}
            for i in range(m.shape[0])
            for j, l in enumerate(result.sink_layers)
        ]
    )


def _trigger_sink_rates(
    original, tok, corpus: UnlearningCorpus, trigger: Trigger, placements: list, n: int, out: Path
) -> None:
    """Claim C6's sink side: θ_o's sink rate at the trigger's positions (mean over layers), on the
    D_f KnowMem prompts with the study's trigger at each trained placement."""
    frames = []
    for placement in placements:
        pairs = poisoned_pairs(tok, corpus, replace(trigger, placement=placement), n)
        rate = sink_rate_at(original, pairs.poisoned, pairs.trigger_positions)
        frames.append(
            pd.DataFrame({"placement": str(placement), "sample": range(len(rate)), "sink_rate": rate.numpy()})
        )
    if frames:
        save_table(pd.concat(frames, ignore_index=True), out / "trigger_sink_rate.parquet")


def _correlations(
    bridges, tok, corpus, trigger: Trigger, positions: list[int], n: int, n_boot: int, out: Path, layer: int
) -> None:
    """Fig. 5 for the prefix θ_b, vanilla and value-norm aligned, against θ_u NPO / θ_o."""
    data = {
        "forget": passage_inputs(tok, corpus.forget.passages, None, n),
        "poisoned": passage_inputs(tok, corpus.forget.passages, trigger, n),
        "retain": passage_inputs(tok, corpus.retain.passages, None, n),
    }
    positions, note = varying_positions(data, positions)
    norms: dict = {}  # θ_o's and θ_u's value norms serve both θ_b
    for variant, name in (("vanilla", "backdoor_prefix"), ("vn", "backdoor_prefix_vn")):
        if name not in bridges:
            continue
        trio = Trio(original=bridges["original"], unlearned=bridges["unlearned"], backdoored=bridges[name])
        comparisons = paper_comparisons(trio, data, positions, layer, n_boot=n_boot, norms_cache=norms)
        result = replace(comparisons, positions_note=note)
        run = describe_run(
            trio._asdict(),
            trigger=trigger.text,
            sink_positions=positions,
            positions_note=note,
            inputs="D_f / D_p forget prose passages (clean / with the trigger), D_r retain prose passages",
        )
        save_result(result, out, f"correlation_{variant}", run)


# ---- the summary: from saved results only -------------------------------------------------
def _num(x, digits: int = 4) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, digits)


def logit_shift(result: PairAnalysis) -> dict:
    """Mean true-token logit, clean vs poisoned: *at* the trigger (raw positions p_first … p_last,
    as Fig. 4 plots them) and *after* it, content-aligned (poisoned position t ≥ p_last predicts the
    same content token as clean position t − n_trig), averaged per sample, then over samples."""
    at, after = {"clean": [], "poisoned": []}, {"clean": [], "poisoned": []}
    for i, row in enumerate(result.trigger_positions.tolist()):
        trig = [p for p in row if p >= 0]
        if not trig:
            continue
        first, last = min(trig), max(trig)  # build_ids inserts the trigger as one contiguous run
        clean, poisoned = result.logit[0, i], result.logit[1, i]
        at["clean"].append(clean[first : last + 1].nanmean())
        at["poisoned"].append(poisoned[first : last + 1].nanmean())
        after["clean"].append(clean[first - 1 :].nanmean())
        after["poisoned"].append(poisoned[last:].nanmean())
    mean = lambda xs: _num(torch.stack(xs).nanmean()) if xs else None  # noqa: E731
    return {
        "at_trigger": {k: mean(v) for k, v in at.items()},
        "after_trigger": {k: mean(v) for k, v in after.items()},
    }


def _increasing(values: list[float | None]) -> bool | None:
    if any(v is None for v in values):
        return None
    return all(a < b for a, b in zip(values, values[1:]))


def summarise(folder: Path) -> dict:
    """The insight numbers, from the results saved in ``folder`` (nothing is recomputed)."""
    folder = Path(folder)
    have = lambda name: (folder / f"{name}.json").is_file()  # noqa: E731
    attention, logits, layer = {}, {}, None
    for placement in CONTRASTED_PLACEMENTS:
        for model in ("original", "backdoor"):
            name = f"{model}_{placement}"
            if not have(f"pairs_{name}"):
                continue
            r = load_result(folder, f"pairs_{name}", PairAnalysis)
            layer = r.layer
            attention[name] = {
                "clean": _num(r.trigger_mass[:, 0].nanmean()),
                "poisoned": _num(r.trigger_mass[:, 1].nanmean()),
            }
            logits[name] = logit_shift(r)
    correlation, ordering = {}, {}
    for variant in ("vanilla", "vn"):
        if not have(f"correlation_{variant}"):
            continue
        table = load_result(folder, f"correlation_{variant}", NormCorrelation).table
        correlation[variant] = [
            {k: (_num(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
            for row in table[["comparison", "position", "r", "ci_low", "ci_high", "n_samples"]].to_dict("records")
        ]
        per_position = {
            int(p): _increasing([_num(r, 6) for r in g["r"]]) for p, g in table.groupby("position", sort=True)
        }
        ordering[variant] = {"per_position": per_position, "all_positions": all(per_position.values())}
    sinks = load_result(folder, "sinks_original", SinkReport)
    poisoned = lambda name: (attention.get(name) or {}).get("poisoned")  # noqa: E731

    def more(a, b):
        return None if poisoned(a) is None or poisoned(b) is None else poisoned(a) > poisoned(b)

    answers = {
        "prefix_backdoor_attends_trigger_more_than_original": more("backdoor_prefix", "original_prefix"),
        "prefix_backdoor_attends_trigger_more_than_infix_backdoor": more("backdoor_prefix", "backdoor_infix"),
        "poisoned_logits_higher": {
            name: {
                where: (v["poisoned"] > v["clean"]) if None not in v.values() else None for where, v in shift.items()
            }
            for name, shift in logits.items()
        },
        "correlation_i_lt_ii_lt_iii": {v: o["all_positions"] for v, o in ordering.items()},
    }
    return {
        "layer": layer,
        "sink_positions": sorted({row["position"] for rows in correlation.values() for row in rows}),
        "sink_rate_original": {f"layer {l}": [_num(x) for x in sinks.rate[i, :4]] for i, l in enumerate(sinks.layers)},
        "trigger_attention": attention,
        "logits": logits,
        "correlation": correlation,
        "positions_note": load_run(folder, "correlation_vanilla").get("positions_note")
        if have("correlation_vanilla")
        else None,
        "correlation_ordering": ordering,
        "answers": answers,
    }


def fmt(x, digits: int = 4) -> str:
    """A summary number as text: n/a for a missing one, yes / no for a verdict."""
    return "n/a" if x is None else (("yes" if x else "no") if isinstance(x, bool) else f"{x:.{digits}g}")


def summary_markdown(s: dict) -> str:
    """A short human-readable page of :func:`summarise`'s numbers."""
    lines = [
        f"# Analysis summary (layer {s['layer']}, {s.get('n_samples', '?')} D_f prompts)",
        "",
        "## Insight 1: attention on the trigger (mean over queries after it)",
        "",
        "| model / placement | clean (same positions) | poisoned |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {fmt(v['clean'])} | {fmt(v['poisoned'])} |" for k, v in s["trigger_attention"].items()]
    lines += [
        "",
        "## Insight 2: true-token logits, clean vs poisoned",
        "",
        "| model / placement | at trigger: clean | poisoned | after trigger (content-aligned): clean | poisoned |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {fmt(v['at_trigger']['clean'])} | {fmt(v['at_trigger']['poisoned'])} | "
        f"{fmt(v['after_trigger']['clean'])} | {fmt(v['after_trigger']['poisoned'])} |"
        for k, v in s["logits"].items()
    ]
    lines += [
        "",
        f"## Insight 3: sink value-norm correlation (S = {s['sink_positions']})",
        "",
        "| θ_b | comparison | position | r | 95% CI |",
        "|---|---|---|---|---|",
    ]
    if s.get("positions_note"):
        lines[-2:-2] = [f"Positions: {s['positions_note']}.", ""]
    lines += [
        f"| {variant} | {row['comparison']} | {row['position']} | {fmt(row['r'], 6)} | "
        f"[{fmt(row['ci_low'], 6)}, {fmt(row['ci_high'], 6)}] |"
        for variant, rows in s["correlation"].items()
        for row in rows
    ]
    return "\n".join(lines + _answers_markdown(s["answers"])) + "\n"


def _answers_markdown(a: dict) -> list[str]:
    lines = [
        "",
        "## Answers",
        "",
        f"- prefix θ_b attends to the trigger more than θ_o: "
        f"**{fmt(a['prefix_backdoor_attends_trigger_more_than_original'])}**",
        f"- prefix θ_b attends to the trigger more than infix θ_b: "
        f"**{fmt(a['prefix_backdoor_attends_trigger_more_than_infix_backdoor'])}**",
    ]
    lines += [
        f"- poisoned logits higher ({name}): at trigger **{fmt(v['at_trigger'])}**, "
        f"after trigger **{fmt(v['after_trigger'])}**"
        for name, v in a["poisoned_logits_higher"].items()
    ]
    lines += [
        f"- correlation (i) < (ii) < (iii) at every sink position ({variant}): **{fmt(v)}**"
        for variant, v in a["correlation_i_lt_ii_lt_iii"].items()
    ]
    return lines
