"""The embedded study, stage by stage: world → θ_o → θ_u (NPO, RMU) → θ_b → UE/BE/UT table.

Each stage writes its folder atomically with a run card that carries a key: the hash of
everything that determines the stage (its config and its parents' keys). A stage whose
folder already holds a card with the same key is reused; a changed config redoes that
stage and everything downstream of it; an interrupted training run resumes from its
state folder. Analyses, figures and the report build on the finished checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from sinkprobe.data.poison import DEFAULT_TRIGGER, PLACEMENTS, Trigger
from sinkprobe.data.synthetic import WorldConfig, build_world, general_passages, multiple_choice
from sinkprobe.data.tokenizer import load_tokenizer, train_tokenizer
from sinkprobe.data.types import UnlearningCorpus, read_corpus
from sinkprobe.eval.multiple_choice import mc_accuracy
from sinkprobe.eval.table import (
    METRIC_HEADERS,
    TABLE_COLUMNS,
    EvalSettings,
    baselines_by_placement,
    evaluate_memorization,
    forget_prompts,
    write_table,
)
from sinkprobe.guards import read_json, require_writable
from sinkprobe.keys import content_key
from sinkprobe.layout import StudyLayout
from sinkprobe.models.base import DEFAULT_BASE, SCRATCH, base_folder, base_identity
from sinkprobe.models.io import (
    RUN_CARD,
    atomic_write_json,
    atomic_write_text,
    default_device,
    load_checkpoint,
    read_run_card,
    save_checkpoint,
)
from sinkprobe.pipeline.recipes import Recipe, apply_overrides, load_recipe, with_unlearn
from sinkprobe.pipeline.runs import train_and_save
from sinkprobe.records import ModelRow, at_main_ratio, main_poison_ratio, main_trigger
from sinkprobe.tables import write_csv_md
from sinkprobe.training.finetune import FinetuneConfig, finetune_original
from sinkprobe.training.pretrain import ModelConfig, PretrainConfig, pretrain_original
from sinkprobe.validation import above, at_least, check_fields, one_of


@dataclass(frozen=True)
class StudyConfig:
    """Everything the embedded study depends on. Small settings make the smoke-test study."""

    world: WorldConfig = WorldConfig()
    base: str = DEFAULT_BASE  # θ_o's base: "smollm2-135m", "scratch" (trained from scratch), or a model folder
    model: ModelConfig = ModelConfig()  # scratch θ_o
    pretrain: PretrainConfig = PretrainConfig()  # scratch θ_o
    finetune: FinetuneConfig = FinetuneConfig()  # θ_o from a base
    vocab_size: int = 2048
    seeds: tuple[int, ...] = (0,)
    extra_runs: bool = False  # Fig. A1 (ρ = 5 %) and Fig. A2 (other trigger patterns) beside the grid
    placements: tuple[str, ...] = ("prefix", "infix", "suffix")
    value_norm_weight: float = 1.0  # λ of the value-norm-aligned backdoor runs
    eval: EvalSettings = EvalSettings()
    analysis_layer: int | None = None  # the layer of the analyses and Fig. 3-5; None: the last
    overrides: tuple[str, ...] = ()  # applied to every embedded recipe, e.g. "unlearn.steps=20"

    def __post_init__(self) -> None:
        # 259: the 256 byte symbols of byte-level BPE and the three special tokens
        check_fields(
            self,
            "study",
            {
                "vocab_size": at_least(259),
                "seeds": at_least(0),
                "placements": one_of(*PLACEMENTS),
                "value_norm_weight": above(0),
            },
        )
        for name in ("seeds", "placements"):
            if not getattr(self, name):
                raise ValueError(f"study.{name} = (): expected a list of at least one")
        if self.model.max_positions < self.pretrain.seq_len:
            raise ValueError(
                f"model.max_positions = {self.model.max_positions}: "
                f"expected ≥ pretrain.seq_len = {self.pretrain.seq_len}"
            )


REPO_TRAINING = Path("training")  # recipe folders, relative to the repository root the CLI runs in
THETA_O_SECTIONS = ("world", "model", "pretrain", "finetune")
TOP_LEVEL = ("base", "analysis_layer", "seeds", "extra_runs")  # study fields --set names without a section
EMBEDDED_RECIPES = ("npo", "rmu", "npo_backdoor", "rmu_backdoor")  # the recipe files of the study's runs


def with_overrides(cfg: StudyConfig, overrides: Sequence[str]) -> StudyConfig:
    """``--set`` items on a study: ``base=…`` picks θ_o's base; ``world.*``, ``model.*``,
    ``pretrain.*`` and ``finetune.*`` change the world and θ_o (e.g. ``pretrain.weight_decay=0.5``);
    every other section is a recipe override, kept for every embedded recipe (e.g. ``unlearn.lr=1e-4``)."""
    parsed = apply_overrides({}, list(overrides))  # a malformed item fails here, before any stage runs
    top = {
        k: v for k, v in parsed.items() if k in TOP_LEVEL
    }  # e.g. base=smollm2-135m, analysis_layer=20, seeds=[0,1,2]
    if isinstance(top.get("seeds"), (list, int)):
        top["seeds"] = tuple(top["seeds"]) if isinstance(top["seeds"], list) else (top["seeds"],)
    cfg = replace(cfg, **top)
    overrides = [item for item in overrides if item.split("=", 1)[0].strip() not in TOP_LEVEL]
    changes = {section: parsed.get(section, {}) for section in THETA_O_SECTIONS}
    for section, changed in changes.items():
        known = {f.name for f in fields(getattr(cfg, section))}
        for name in changed:
            if name not in known:
                raise ValueError(f"{section}.{name}: unknown field; {section} fields are {', '.join(sorted(known))}")
    rest = tuple(item for item in overrides if item.split(".", 1)[0].strip() not in THETA_O_SECTIONS)
    return replace(
        cfg, **{s: replace(getattr(cfg, s), **changes[s]) for s in THETA_O_SECTIONS}, overrides=cfg.overrides + rest
    )


SINK_KEYS = 8  # keys 0..7 are scored for the sink set S
SINK_SET_RATE = 0.5  # S: keys that are a sink of at least half the heads, averaged over layers


def first_token_sink(folder: Path, corpus: UnlearningCorpus, n: int = 64) -> dict:
    """Gu et al.'s α(0) per layer and head, the sink rate per layer (ε = 0.3), and the sink set
    S (keys < 8 with a mean sink rate ≥ 0.5; BOS alone if none passes), on D_f prompts. S is
    what value-norm alignment aligns unless a recipe names its own."""
    from sinkprobe.analysis.sinks import detect_sinks
    from sinkprobe.models.hooked import open_bridge

    bridge = open_bridge(folder)
    report = detect_sinks(bridge, forget_prompts(bridge.tokenizer, corpus, None, n), max_key=SINK_KEYS)
    detected = report.positions(SINK_SET_RATE)
    return {
        "sink_inputs": f"{min(n, len(corpus.forget.knowmem))} clean D_f KnowMem prompts",
        **report.first_token(),
        "sink_rate_per_key": [round(float(r), 4) for r in report.rate.nanmean(0)],
        "sink_positions": detected or [0],
        "sink_positions_rule": f"keys < {SINK_KEYS} with mean sink rate ≥ {SINK_SET_RATE}"
        + ("" if detected else "; none passes, so BOS (0)"),
    }


stage_key = content_key  # a stage's key: what it was computed from


def _done(folder: Path, key: str) -> bool:
    return read_run_card(folder).get("stage_key") == key


@dataclass(frozen=True)
class RunSpec:
    """One unlearning run of the study: its recipe, its folder name, θ_o and (for ℓ_vn) θ_u as (folder, stage key)."""

    recipe: Recipe
    name: str
    parent: tuple[Path, str]
    unlearned: tuple[Path, str] | None = None


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(base: str = SCRATCH) -> int:
    """Runs at once: for a from-scratch θ_o on CPU one per core (at most 4: a small model uses a
    core better one run per core than one run over all cores); one for a pretrained base (a
    135M model trains faster on all cores than two runs on one core each) and on a GPU
    (``--jobs`` shares a large GPU between small runs)."""
    if default_device().type == "cuda" or base != SCRATCH:
        return 1
    return max(1, min(4, available_cores()))


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    # Ctrl-C reaches every process of the terminal's group: a worker ends at once and quietly
    # (its run resumes from its last saved state), and the main process prints the one line.
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))


def _run_in_worker(cfg: StudyConfig, out: Path, recipes: Path, spec: RunSpec) -> str:
    lines: list[str] = []
    study = Study(cfg, out, recipes, log=lines.append)
    corpus, _, _ = study.world()
    study.run(spec, corpus, progress=False)
    return "\n".join(lines)


@dataclass
class Study:
    cfg: StudyConfig
    out: Path
    recipes: Path
    log: Callable[[str], None] = print
    jobs: int = 1  # unlearning runs trained at once (worker processes)
    built: list[str] = field(default_factory=list)  # checkpoints trained (not reused) by this Study

    @property
    def layout(self) -> StudyLayout:
        return StudyLayout(self.out)

    # ---- world -------------------------------------------------------------------------
    def base_folder(self) -> Path | None:
        """θ_o's base model (de-quantised once into the cache), or None for a from-scratch θ_o."""
        return None if self.cfg.base == SCRATCH else base_folder(self.cfg.base)

    def world(self) -> tuple[UnlearningCorpus, object, str]:
        """The world's books and the tokenizer: the base's, or one trained on the world (scratch)."""
        layout = self.layout
        base = self.base_folder()
        key = stage_key("world", self.cfg.world, self.cfg.vocab_size if base is None else base_identity(base))
        card = layout.world_card
        fix = f"delete {layout.world} and run again: the world is rebuilt from its seed"
        if card.is_file() and (read_json(card, fix) or {}).get("stage_key") == key:
            return read_corpus(layout.corpus), load_tokenizer(layout.tokenizer), key
        corpus = build_world(self.cfg.world)
        tok = (
            train_tokenizer(corpus.pretraining_documents(), vocab_size=self.cfg.vocab_size)
            if base is None
            else load_tokenizer(base)
        )
        tok.save_pretrained(layout.tokenizer)
        atomic_write_text(layout.corpus, corpus.to_json())
        atomic_write_text(card, json.dumps({"stage_key": key, "sha256": corpus.sha256()}))
        self.log(
            f"world: {len(corpus.forget.knowmem)} forget / {len(corpus.retain.knowmem)} retain QA, {len(tok)} tokens"
        )
        return corpus, tok, key

    # ---- θ_o ---------------------------------------------------------------------------
    def pretraining_text(
        self, corpus: UnlearningCorpus, extra_genres: Sequence[Callable] = ()
    ) -> tuple[list[str], Callable[[int], list[str]]]:
        """θ_o's reading: the two books, repeated every epoch, and everyday text drawn anew each
        epoch, so θ_o memorises the books and only learns the grammar of the rest
        (``extra_genres``: a sink probe's own kinds of everyday text)."""
        world = self.cfg.world
        return [*corpus.forget.passages, *corpus.retain.passages], lambda epoch: general_passages(
            f"{world.seed}-{epoch}", world.n_general_passages, extra_genres
        )

    def theta_o_config(self) -> tuple:
        """What θ_o's training depends on besides the world: the from-scratch model and schedule,
        or the base and the fine-tuning schedule."""
        return (self.cfg.model, self.cfg.pretrain) if self.cfg.base == SCRATCH else (self.cfg.base, self.cfg.finetune)

    def train_original(self, corpus: UnlearningCorpus, tok) -> tuple[object, dict, dict, dict]:
        """(θ_o, training summary, its card's config part, the clean scores of the model θ_o
        started from: a random init for scratch, the base itself otherwise)."""
        books, everyday = self.pretraining_text(corpus)
        state = self.layout.state("original")
        base = self.base_folder()
        if base is None:
            model, summary = pretrain_original(
                books, tok, self.cfg.model, self.cfg.pretrain, state, fresh_documents=everyday
            )
            before = type(model)(model.config).to(model.device).eval()
            part = {
                "base": SCRATCH,
                "model": asdict(self.cfg.model),
                "pretrain": asdict(self.cfg.pretrain),
                "seed": self.cfg.pretrain.seed,
            }
        else:
            model, _, summary = finetune_original(base, books, self.cfg.finetune, state)
            before = load_checkpoint(base, device=model.device)[0]
            part = {
                "base": self.cfg.base,
                "base_folder": str(base),
                "base_identity": base_identity(base),
                "finetune": asdict(self.cfg.finetune),
                "seed": self.cfg.finetune.seed,
            }
        scores = evaluate_memorization(before, tok, corpus, None, replace(self.cfg.eval, progress=True))
        return (
            model,
            summary,
            part,
            {
                "forget_knowmem": scores["ue_knowmem"],
                "forget_verbmem": scores["ue_verbmem"],
                "retain_knowmem": scores["ut_knowmem"],
            },
        )

    def original(self, corpus: UnlearningCorpus, tok, world_key: str) -> tuple[Path, str]:
        folder = self.layout.original
        key = stage_key("original", world_key, *self.theta_o_config(), self.cfg.eval)
        if _done(folder, key):
            self.add_item_scores(folder, corpus)
            return folder, key
        self.built.append("original")
        model, summary, part, before = self.train_original(corpus, tok)
        # BE of θ_o with the default trigger at every placement: the reference of each θ_b row.
        t0 = time.perf_counter()
        by_placement = baselines_by_placement(
            model, tok, corpus, DEFAULT_TRIGGER, replace(self.cfg.eval, progress=True)
        )
        eval_seconds = round(time.perf_counter() - t0, 1)
        metrics = by_placement["prefix"]
        card = {
            "stage_key": key,
            "kind": "original",
            **part,
            "world": asdict(self.cfg.world),
            "data_sha256": corpus.sha256(),
            "n_params": sum(p.numel() for p in model.parameters()),
            "train_seconds": summary["train_seconds"],
            "eval_seconds": eval_seconds,  # UE and UT once, BE at every placement
            "device": summary["device"],
            "final_loss": summary["losses"][-1],
            "forget_knowmem": metrics["ue_knowmem"],
            "forget_verbmem": metrics["ue_verbmem"],
            "retain_knowmem": metrics["ut_knowmem"],
            "metrics": metrics,
            "metrics_by_placement": by_placement,
            "before_training": before,  # the random init (scratch) or the base: where the knowledge was not yet
        }
        save_checkpoint(model, tok, folder, card)
        card.update(first_token_sink(folder, corpus))
        atomic_write_json(folder / RUN_CARD, card)
        self.drop_state("original")
        self.log(
            f"θ_o: KnowMem forget {card['forget_knowmem']:.1f} / retain {card['retain_knowmem']:.1f}, "
            f"VerbMem {card['forget_verbmem']:.1f}"
        )
        return folder, key

    def add_item_scores(self, folder: Path, corpus: UnlearningCorpus) -> None:
        """A θ_o card written before cards kept per-item scores (which the claims' intervals
        need) gets them by evaluating the same checkpoint again: greedy decoding, same numbers."""
        card = read_run_card(folder)
        if "item_scores" in card["metrics_by_placement"]["prefix"]:
            return
        model, tok = load_checkpoint(folder, device=default_device())
        card["metrics_by_placement"] = baselines_by_placement(
            model, tok, corpus, DEFAULT_TRIGGER, replace(self.cfg.eval, progress=True)
        )
        card["metrics"] = card["metrics_by_placement"]["prefix"]
        atomic_write_json(folder / RUN_CARD, card)

    def drop_state(self, name: str) -> None:
        """A run's resumable state, once its checkpoint and card are written: the card now says
        the run is done, and a state is as large as the weights."""
        shutil.rmtree(self.layout.state(name), ignore_errors=True)

    # ---- unlearning runs ---------------------------------------------------------------
    def run_key(self, spec: RunSpec) -> str:
        return stage_key(
            "unlearn", spec.recipe.unlearn, spec.parent[1], spec.unlearned[1] if spec.unlearned else None, self.cfg.eval
        )

    def folder(self, name: str) -> Path:
        return self.layout.model(name)

    def run(self, spec: RunSpec, corpus: UnlearningCorpus, progress: bool = True) -> tuple[Path, str]:
        folder, key = self.folder(spec.name), self.run_key(spec)
        if _done(folder, key):
            return folder, key
        _, card = train_and_save(
            spec.recipe,
            corpus,
            spec.parent[0],
            folder,
            self.layout.state(spec.name),
            spec.unlearned[0] if spec.unlearned else None,
            self.cfg.eval,
            extra_card={"stage_key": key, "name": spec.name},
            progress=progress,
            # NPO's reference log-likelihoods on D_f (and θ_u's value norms) are the same for
            # every run from this θ_o: computed by the first run, read by the others
            reference_dir=self.layout.references,
        )
        self.drop_state(spec.name)
        metrics = card["metrics"]
        self.log(
            f"{spec.name}: UE KM {metrics['ue_knowmem']:.1f} VM {metrics['ue_verbmem']:.1f} | "
            f"BE KM {metrics['be_knowmem']:.1f} VM {metrics['be_verbmem']:.1f} | "
            f"UT {metrics['ut_knowmem']:.1f} ({card['train_seconds']:.0f}s)"
        )
        return folder, key

    def run_all(self, specs: list[RunSpec], corpus: UnlearningCorpus) -> list[tuple[Path, str]]:
        """Train (or reuse) independent runs; with ``jobs`` > 1, that many at once in worker
        processes sharing the cores (small models use a core better one run per core than
        one run over all cores). The finished folders are then read back in order."""
        todo = [s for s in specs if not _done(self.folder(s.name), self.run_key(s))]
        self.built += [s.name for s in todo]
        if self.jobs > 1 and len(todo) > 1:
            workers = min(self.jobs, len(todo))
            threads = max(1, available_cores() // workers)
            with ProcessPoolExecutor(
                workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(threads,)
            ) as pool:
                # Workers are spawned by submit; they inherit an ignored Ctrl-C, so one pressed
                # while they import torch prints no traceback (_start_worker then takes it over).
                main_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    futures = [pool.submit(_run_in_worker, self.cfg, self.out, self.recipes, s) for s in todo]
                finally:
                    signal.signal(signal.SIGINT, main_handler)
                for f in tqdm(as_completed(futures), total=len(futures), desc=f"unlearning runs ({workers} at once)"):
                    self.log(f.result())
        return [self.run(s, corpus) for s in specs]

    def recipe(self, name: str) -> Recipe:
        path = self.recipes / f"{name}.toml"
        return load_recipe(path, list(self.cfg.overrides))

    # ---- the whole study ---------------------------------------------------------------
    def models(self) -> list[ModelRow]:
        """Train (or reuse) every checkpoint of Table A4; returns one descriptor per model."""
        corpus, tok, wkey = self.world()
        original = self.original(corpus, tok, wkey)
        seed = self.cfg.seeds[0]
        rows = self.baseline_rows("θ_o", None, read_run_card(original[0])["seed"], original[0])
        npo, rmu = self.recipe("npo"), self.recipe("rmu")
        # θ_u NPO at every seed (the claims pair each θ_b with the θ_u of its seed); RMU at the first.
        # The first seed's folders keep their plain names, so a one-seed study's checkpoints are reused.
        npo_names = {s: StudyLayout.unlearned_name(s, seed) for s in self.cfg.seeds}
        built = self.run_all(
            [RunSpec(with_unlearn(npo, seed=s), npo_names[s], original) for s in self.cfg.seeds]
            + [RunSpec(with_unlearn(rmu, seed=seed), "rmu", original)],
            corpus,
        )
        theta_u = dict(zip(self.cfg.seeds, built))
        for s in self.cfg.seeds:
            rows += self.baseline_rows("θ_u NPO", "npo", s, theta_u[s][0])
        rows += self.baseline_rows("θ_u RMU", "rmu", seed, built[-1][0])
        backdoor, specs = self.recipe("npo_backdoor"), []

        def backdoored(placement: str, vn: float, seed: int, tag: str = "", **changes) -> None:
            r = with_unlearn(backdoor, trigger_placement=placement, value_norm_weight=vn, seed=seed, **changes)
            name = StudyLayout.backdoor_name(placement, bool(vn), seed, tag)
            specs.append(RunSpec(r, name, original, theta_u[seed] if vn else None))
            rows.append(backdoor_row(f"θ_b NPO-Backdoor{' +VN' if vn else ''}", r, seed, self.folder(name)))

        for placement in self.cfg.placements:  # Table A4, Fig. 2-5: every placement, with and without ℓ_vn
            for vn in (0.0, self.cfg.value_norm_weight):
                for s in self.cfg.seeds:
                    backdoored(placement, vn, s)
        if self.cfg.extra_runs:
            for vn in (0.0, self.cfg.value_norm_weight):  # Fig. A1: ρ = 5 % beside the default 10 %
                backdoored("prefix", vn, seed, tag="_rho05", poison_ratio=0.05)
            for tag, text in (("_bang", "!!!!!"), ("_steps", "step-by-step")):  # Fig. A2: other trigger patterns
                for placement in self.cfg.placements:
                    backdoored(placement, 0.0, seed, tag=tag, trigger_text=text)
        rb = with_unlearn(self.recipe("rmu_backdoor"), seed=seed)
        specs.append(RunSpec(rb, "rmu_backdoor_prefix", original, built[-1] if rb.unlearn.value_norm_weight else None))
        rows.append(backdoor_row("θ_b RMU-Backdoor", rb, seed, self.folder("rmu_backdoor_prefix")))
        self.run_all(specs, corpus)
        return rows

    def run_seconds(self, rows: list[ModelRow]) -> dict[str, dict]:
        """Each checkpoint's own training and evaluation seconds, from its run card (when it was built)."""
        cards = {f.name: read_run_card(f) for f in sorted({r.folder for r in rows})}
        return {name: {k: c[k] for k in ("train_seconds", "eval_seconds") if k in c} for name, c in cards.items()}

    def baseline_rows(self, model: str, method: str | None, seed: int, folder: Path) -> list[ModelRow]:
        """θ_o / θ_u: one row per placement of the default trigger (BE measured there, no trigger
        trained), prefix first — the reference of Table 1 and Fig. 2."""
        return [ModelRow(model, seed, folder, method, placement=p, baseline=True) for p in self.cfg.placements]

    def table(self, rows: list[ModelRow]) -> list[dict]:
        """Table A4 rows, metrics read from each checkpoint's run card."""
        out = []
        for row in rows:
            card = read_run_card(row.folder)
            found = card["metrics_by_placement"][row.placement] if row.baseline else card["metrics"]
            metrics = {k: found.get(k) for k in TABLE_COLUMNS[6:]}
            out.append({**row.table_cells(), **metrics, "train_seconds": card.get("train_seconds", "")})
        return out


def backdoor_row(label: str, recipe: Recipe, seed: int, folder: Path) -> ModelRow:
    """A θ_b's row of Table A4, described by the recipe it is trained with."""
    u = recipe.unlearn
    return ModelRow(
        label, seed, folder, u.method, u.trigger_text, u.trigger_placement, u.value_norm_weight, u.poison_ratio
    )


TABLE2_MODELS = ("θ_o", "θ_u NPO", "θ_u RMU", "θ_b NPO-Backdoor", "θ_b NPO-Backdoor +VN", "θ_b RMU-Backdoor")


def table2(out: Path, model_rows: list[ModelRow], seed: int) -> list[dict]:
    """The paper's Table 2 analogue: accuracy on the embedded multiple-choice set — UE on the
    forget book's questions, BE with the study's trigger at the prefix, UT on the retain book's —
    for θ_o, θ_u and the ``seed`` prefix backdoors of the main grid. Cached in each checkpoint folder."""
    corpus = read_corpus(StudyLayout(out).corpus)
    forget, retain = multiple_choice(corpus.forget), multiple_choice(corpus.retain)
    rho, text = main_poison_ratio(model_rows), main_trigger(model_rows) or DEFAULT_TRIGGER
    picked = [
        r
        for r in model_rows
        if r.model in TABLE2_MODELS
        and r.placement == "prefix"
        and (r.model == "θ_o" or r.seed == seed)
        and at_main_ratio(r, rho)
        and r.trigger in (None, text)
    ]
    rows = []
    for r in picked:
        card = read_run_card(r.folder)
        cache = r.folder / "table2_metrics.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        if (cached.get("stage_key"), cached.get("trigger", DEFAULT_TRIGGER)) != (card.get("stage_key"), text):
            model, tok = load_checkpoint(r.folder, device=default_device())
            trigger = Trigger(text, "prefix")
            cached = {
                "stage_key": card.get("stage_key"),
                "trigger": text,
                "ue_acc": mc_accuracy(model, tok, forget).acc,
                "be_acc": mc_accuracy(model, tok, forget, trigger=trigger).acc,
                "ut_acc": mc_accuracy(model, tok, retain).acc,
            }
            atomic_write_json(cache, cached)
        rows.append(
            {
                "model": r.model,
                "ue_acc": round(cached["ue_acc"], 2),
                "be_acc": round(cached["be_acc"], 2),
                "ut_acc": round(cached["ut_acc"], 2),
            }
        )
    return rows


def write_table2(rows: list[dict], stem: Path, model_rows: list[ModelRow], seed: int) -> None:
    rho, text = main_poison_ratio(model_rows), main_trigger(model_rows) or DEFAULT_TRIGGER
    title = (
        f"Table 2 (embedded): multiple-choice accuracy (4 choices, chance 25); BE: prefix '{text}'; "
        f"θ_b rows: seed {seed}, prefix, ρ {100 * (rho or 0):g} %"
    )
    write_csv_md(pd.DataFrame(rows, columns=["model", "ue_acc", "be_acc", "ut_acc"]), stem, title, METRIC_HEADERS)


def default_recipes(base: str) -> Path:
    """The recipes tuned for θ_o's base: the from-scratch θ_o's, or a pretrained base's."""
    return REPO_TRAINING / ("embedded" if base == SCRATCH else "smollm2")


STUDY_CONFIGS = Path(__file__).resolve().parents[2] / "training" / "study"  # default, quick, full, gpu
SECTIONS = {
    "world": WorldConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "eval": EvalSettings,
}


def _read_study_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The TOML of a study config with its ``inherits`` chain applied (a child's keys win)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no study config at {path}: give a TOML file such as {STUDY_CONFIGS / 'default.toml'}")
    if path.resolve() in seen:
        raise ValueError(f"{path} inherits from itself (through {' → '.join(p.name for p in seen)}): break the cycle")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML ({e}): fix the file") from None
    parent = raw.pop("inherits", None)
    if parent is None:
        return raw
    merged = _read_study_toml(path.parent / parent, (*seen, path.resolve()))
    for key, value in raw.items():
        merged[key] = {**merged.get(key, {}), **value} if key in SECTIONS else value
    return merged


def load_study_config(path: str | Path) -> StudyConfig:
    """A :class:`StudyConfig` from a TOML file (``training/study/*.toml``): top-level fields, and
    the sections ``[world]``, ``[model]``, ``[pretrain]``, ``[finetune]``, ``[eval]``; unknown
    names are a one-line error."""
    raw = _read_study_toml(Path(path))
    known = {f.name for f in fields(StudyConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown study field(s) {', '.join(unknown)}; fields are {', '.join(sorted(known))}")
    values = {}
    for key, value in raw.items():
        if key in SECTIONS:
            section = {f.name for f in fields(SECTIONS[key])}
            bad = sorted(set(value) - section)
            if bad:
                raise ValueError(
                    f"{path}: [{key}] has unknown field(s) {', '.join(bad)}; fields are {', '.join(sorted(section))}"
                )
            values[key] = SECTIONS[key](**value)
        else:
            values[key] = tuple(value) if isinstance(value, list) else value
    return StudyConfig(**values)


def quick_config() -> StudyConfig:
    """``--quick``: ``training/study/quick.toml``, a smoke test in minutes, not the study."""
    return load_study_config(STUDY_CONFIGS / "quick.toml")


def full_config() -> StudyConfig:
    """``--full``: ``training/study/full.toml``, three seeds of θ_u NPO and of every NPO-Backdoor
    grid run, and the runs of Fig. A1 and A2."""
    return load_study_config(STUDY_CONFIGS / "full.toml")


def require_study_folder(out: Path) -> None:
    """Before any work: ``out`` must be new, empty or a study (it has a world folder). Anything
    else holds the user's files, which the study's stages would mix with or replace."""
    if out.is_dir() and any(out.iterdir()) and not (out / "world").is_dir():
        raise FileExistsError(
            f"{out} exists and is not a sinkprobe study (no world/ folder): choose a new or empty folder for --out"
        )
    require_writable(out, "the study folder")


def run_study(cfg: StudyConfig, out: Path, recipes: Path, figures: Path | None = None, jobs: int = 1) -> Path:
    """The README's main job: every checkpoint, the table, the analyses, figures and the report.
    Each stage's wall time of this invocation goes to ``results/timing.json``, and to ``figures/``
    when this invocation trained something."""
    if not recipes.is_dir():
        raise FileNotFoundError(
            f"no recipes folder at {recipes}: run from the repository root "
            f"or pass --recipes {default_recipes(cfg.base)}"
        )
    # Imported here: the analyses, claims, figures and report are what `sinkprobe figures` needs without training.
    from sinkprobe.pipeline.analyses import analyse_study
    from sinkprobe.reporting.claims import study_claims, write_claims
    from sinkprobe.reporting.figures import make_figures
    from sinkprobe.reporting.report import write_report

    study = Study(cfg, out, recipes, jobs=jobs)
    layout = study.layout
    for name in EMBEDDED_RECIPES:  # a bad `--set unlearn.…` is refused now, not after θ_o is trained
        study.recipe(name)
    timing = StageClock()
    with timing("checkpoints (θ_o, θ_u, θ_b: training and UE / BE / UT)"):
        model_rows = study.models()
    with timing("tables A4 and 2"):
        write_table(
            study.table(model_rows),
            layout.result("tableA4"),
            title="Table A4 (embedded): UE / BE / UT per model × seed",
        )
        seed = cfg.seeds[0]
        write_table2(table2(out, model_rows, seed), layout.result("table2"), model_rows, seed)
    with timing("analyses (Fig. 3-5)"):
        analyse_study(out, model_rows, n_samples=64, layer=cfg.analysis_layer, log=study.log)
    with timing("claims"):
        layer = json.loads((out / "analysis" / "summary.json").read_text()).get("layer", cfg.analysis_layer)
        write_claims(
            study_claims(out, model_rows, layer),
            layout.result("claims"),
            f"The paper's claims on this study (base {cfg.base})",
        )
    if figures is not None:
        with timing("figures"):
            make_figures(out, figures, log=study.log)
    with timing("report"):
        report = write_report(out, figures or out / "figures", layout.report, log=study.log)
    record = timing.record(base=cfg.base, built=study.built, runs=study.run_seconds(model_rows))
    atomic_write_json(layout.result("timing.json"), record)
    if figures is not None and study.built:  # a run that only redraws keeps the measured timing of the one that trained
        atomic_write_json(figures / "timing.json", record)
    return report


class StageClock:
    """Wall time of each stage of one study invocation (a reused stage takes seconds)."""

    def __init__(self) -> None:
        self.t0, self.stages = time.perf_counter(), {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - t, 1)

    def record(self, **extra) -> dict:
        return {"stages_seconds": self.stages, "total_seconds": round(time.perf_counter() - self.t0, 1), **extra}
