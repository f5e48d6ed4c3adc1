"""Running one recipe, and evaluating a set of checkpoints, on the embedded world or real data."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from accelerate import PartialState

from sinkprobe.data.multiple_choice import load_multiple_choice
from sinkprobe.data.poison import DEFAULT_TRIGGER, Trigger, chunk_long_passages, poisoned_prompts, samples_from_passages
from sinkprobe.data.sources import load_corpus
from sinkprobe.data.types import UnlearningCorpus
from sinkprobe.eval.multiple_choice import mc_accuracy
from sinkprobe.eval.table import (
    TABLE_COLUMNS,
    EvalSettings,
    baselines_by_placement,
    evaluate_memorization,
    write_table,
)
from sinkprobe.guards import require_writable
from sinkprobe.layout import StudyLayout
from sinkprobe.models.io import (
    check_checkpoint_target,
    default_device,
    load_checkpoint,
    read_run_card,
    require_model_folder,
    save_checkpoint,
)
from sinkprobe.pipeline.recipes import DataSpec, Recipe, load_recipe
from sinkprobe.tables import table_paths
from sinkprobe.training.unlearn import unlearn


def evaluate_model(
    model,
    tok,
    corpus: UnlearningCorpus,
    trigger: Trigger,
    data: DataSpec,
    settings: EvalSettings,
    poisoned: frozenset[str] = frozenset(),
) -> dict:
    """UE / BE / UT: KnowMem + VerbMem where the corpus has them (embedded, MUSE), otherwise
    multiple-choice accuracy on the recipe's test files (WMDP: WMDP-bio/cyber and MMLU).
    ``poisoned``: the prompts trained with the trigger, kept out of the headline BE."""
    tqa = (
        {
            "ut_tqa": round(
                mc_accuracy(model, tok, load_multiple_choice(data.eval_truthfulqa)[: settings.max_items]).acc, 2
            )
        }
        if data.eval_truthfulqa
        else {}
    )
    if corpus.forget.knowmem:
        return {**evaluate_memorization(model, tok, corpus, trigger, settings, poisoned), **tqa}
    if data.source != "wmdp":
        raise ValueError(
            f"the {data.source} corpus at {data.path or 'runs/embedded'} has no KnowMem/VerbMem test sets: rebuild it "
            "(embedded: delete its world folder and run `sinkprobe world`; MUSE: restore knowmem/ and verbmem/)"
        )
    if not data.eval_forget:
        raise ValueError(
            "this corpus has no KnowMem/VerbMem test sets (WMDP): give the WMDP multiple-choice file as "
            "data.eval_forget (and MMLU as data.eval_utility) in the recipe, "
            "or --eval-forget / --eval-utility to `sinkprobe evaluate`"
        )
    forget = load_multiple_choice(data.eval_forget)[: settings.max_items]
    out = {
        "ue_acc": mc_accuracy(model, tok, forget, style="letters").acc,
        "be_acc": mc_accuracy(model, tok, forget, style="letters", trigger=trigger).acc,
    }
    if data.eval_utility:
        out["ut_acc"] = mc_accuracy(
            model, tok, load_multiple_choice(data.eval_utility)[: settings.max_items], style="letters"
        ).acc
    return {**{k: round(v, 2) for k, v in out.items()}, **tqa}


def train_and_save(
    recipe: Recipe,
    corpus: UnlearningCorpus,
    original: Path,
    out: Path,
    state_dir: Path,
    unlearned: Path | None = None,
    eval_settings: EvalSettings = EvalSettings(),
    extra_card: dict | None = None,
    progress: bool = True,
    reference_dir: Path | None = None,
) -> tuple[Path, dict]:
    """Unlearn θ_o with ``recipe``, evaluate UE/BE/UT, save the checkpoint with its run card.
    ``reference_dir``: where the frozen models' references are kept (default: ``state_dir``)."""
    model_o, tok = load_checkpoint(original)
    theta_u = load_checkpoint(unlearned)[0] if unlearned else None
    # a poisoned copy of a window must still fit: its trigger (and a separating space) needs room
    reserve = (
        len(tok(" " + recipe.unlearn.trigger_text + " ", add_special_tokens=False).input_ids)
        if recipe.unlearn.backdoor
        else 0
    )
    forget = chunk_long_passages(tok, samples_from_passages(corpus.forget.passages), recipe.unlearn.max_length, reserve)
    retain = chunk_long_passages(tok, samples_from_passages(corpus.retain.passages), recipe.unlearn.max_length)
    cfg = replace(recipe.unlearn, sink_positions=sink_positions_for(recipe.unlearn, original))
    model, summary = unlearn(
        model_o, tok, forget, retain, cfg, state_dir, unlearned=theta_u, progress=progress, reference_dir=reference_dir
    )
    if not PartialState().is_main_process:  # under `accelerate launch` / torchrun one rank evaluates and writes
        return out, {}
    trigger = cfg.trigger or Trigger(DEFAULT_TRIGGER, "prefix")
    poisoned = poisoned_prompts(forget, summary["poisoned_indices"])
    eval_settings = replace(eval_settings, progress=progress)  # long evaluations show progress too
    baselines, t0 = None, time.perf_counter()
    if not cfg.backdoor and corpus.forget.knowmem:  # θ_u: BE at every placement, clean scores computed once
        baselines = baselines_by_placement(model, tok, corpus, trigger.text, eval_settings)
        metrics = baselines[trigger.placement]
    else:
        metrics = evaluate_model(model, tok, corpus, trigger, recipe.data, eval_settings, poisoned)
    card = {
        **(extra_card or {}),
        "kind": "backdoored" if recipe.unlearn.backdoor else "unlearned",
        "recipe": recipe.name,
        "config": asdict(cfg),  # with the S it used (the recipe's, or θ_o's detected one)
        "parent": str(original),
        "unlearned_reference": str(unlearned) if unlearned else None,
        # BE of a normally unlearned model is measured with the default prefix trigger.
        "trigger": {"text": trigger.text, "placement": trigger.placement, "trained": recipe.unlearn.backdoor},
        "train_seconds": summary["train_seconds"],
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "n_poisoned": summary["n_poisoned"],
        "n_processes": PartialState().num_processes,
        "log": summary["log"],
        "metrics": metrics,
        # θ_u: BE with the default trigger at every placement, the baseline of each θ_b row
        **({"metrics_by_placement": baselines} if baselines else {}),
    }
    save_checkpoint(model, tok, out, card)
    return out, card


def sink_positions_for(cfg, original: Path) -> tuple[int, ...]:
    """S of value-norm alignment: the recipe's, else the one detected on θ_o (its run card)."""
    if cfg.sink_positions or not cfg.value_norm_weight:
        return tuple(cfg.sink_positions)
    detected = read_run_card(original).get("sink_positions")
    if not detected:
        raise ValueError(
            f"{original}'s run card records no detected sink positions S: "
            "set unlearn.sink_positions in the recipe (e.g. [0])"
        )
    return tuple(detected)


def run_recipe(
    recipe_path: str | Path, overrides: list[str], out: Path, study_dir: Path | None = None, overwrite: bool = False
) -> Path:
    recipe = load_recipe(recipe_path, overrides)
    if recipe.data.source == "embedded":
        study_dir = study_dir or Path(recipe.data.path or "runs/embedded")
        corpus = load_corpus("embedded", study_dir)
        study = StudyLayout(study_dir)
        original = Path(recipe.original) if recipe.original else study.original
        default_u, data_path = study.model(recipe.unlearn.method), study.world
    else:
        corpus = load_corpus(recipe.data.source, recipe.data.path)
        original, default_u, data_path = Path(recipe.original), None, Path(recipe.data.path)
    require_model_folder(original)
    unlearned = None
    if recipe.unlearn.value_norm_weight:
        unlearned = Path(recipe.unlearned) if recipe.unlearned else default_u
        if unlearned is None:
            raise ValueError(
                "value_norm_weight > 0 needs θ_u: set `unlearned` in the recipe to a normally unlearned checkpoint"
            )
        require_model_folder(unlearned)
    inputs = [p for p in (original, unlearned, data_path, Path(recipe_path)) if p is not None]
    check_checkpoint_target(out, inputs, study_dir, overwrite)
    require_writable(out.parent, "the output folder")
    state = out.with_name(f".{out.name}.state")
    folder, _ = train_and_save(recipe, corpus, original, out, state, unlearned)
    if PartialState().is_main_process:
        drop_state(state)
    return folder


def drop_state(state: Path) -> None:
    """The run is finished: its resumable state (a full model and optimizer) is no longer needed.
    Kept on failure, so the same command resumes."""
    shutil.rmtree(state, ignore_errors=True)


def check_table_target(stem: Path, overwrite: bool) -> None:
    """Before evaluating: the table's two files can be written, and replace nothing unasked."""
    for path in table_paths(stem):
        if path.is_dir() or path.is_symlink() or (path.exists() and not overwrite):
            raise FileExistsError(
                f"{path} already exists: choose another --out stem, or pass --overwrite to replace the table"
            )
    require_writable(stem.parent, "the output folder")


def evaluate_checkpoints(
    checkpoints: list[Path],
    data: str,
    source: str,
    trigger_text: str,
    placement: str,
    out: Path,
    max_items: int | None = None,
    eval_forget: str = "",
    eval_utility: str = "",
) -> tuple[Path, Path]:
    """One UE / BE / UT table of ``checkpoints``: KnowMem / VerbMem on embedded or MUSE data,
    multiple-choice accuracy on WMDP (``eval_forget``: WMDP questions, ``eval_utility``: MMLU)."""
    corpus = load_corpus(source, data)
    spec = DataSpec(source=source, path=str(data), eval_forget=eval_forget, eval_utility=eval_utility)
    p = int(placement) if placement.isdigit() else placement
    rows = []
    for folder in checkpoints:
        model, tok = load_checkpoint(folder, device=default_device())
        card = read_run_card(folder)
        metrics = evaluate_model(model, tok, corpus, Trigger(trigger_text, p), spec, EvalSettings(max_items=max_items))
        cfg = card.get("config", {})
        rows.append(
            {
                "model": folder.name,
                "method": cfg.get("method", ""),
                "trigger": cfg.get("trigger_text", ""),
                "placement": cfg.get("trigger_placement", "") if cfg.get("trigger_text") else "",
                "value_norm": cfg.get("value_norm_weight", ""),
                "seed": cfg.get("seed", card.get("seed", "")),
                "poison_ratio": cfg.get("poison_ratio", "") if cfg.get("trigger_text") else "",
                **{k: v for k, v in metrics.items() if k in TABLE_COLUMNS or k.endswith(("_acc", "_tqa"))},
            }
        )
    return write_table(rows, out, title=f"UE / BE / UT (BE: '{trigger_text}' at {placement})")
