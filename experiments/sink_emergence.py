"""Does θ_o's first-token sink grow with training? α(0) per layer along one long run.

Trains the embedded θ_o (same world, model and data stream as `sinkprobe study`) for
``--steps`` steps, stopping every ``--every`` steps to measure Gu et al.'s α(0) per layer
and the sink rate (ε = 0.3) on the study's clean D_f KnowMem prompts. The run resumes
from its own state between checkpoints, so the curve is that of one uninterrupted run
with a cosine schedule over ``--steps``; at the last step it also scores KnowMem/VerbMem
(a sink only helps on a θ_o that still memorises) and, per layer, where the attention goes
(first token / self / previous / delimiters / other: :mod:`sinkprobe.analysis.key_classes`).
Writes experiments/results/sink_emergence.json.

    python experiments/sink_emergence.py --study runs/embedded --steps 3600 --every 600
    python experiments/sink_emergence.py --steps 1200 --every 300 --set pretrain.lr=1e-2 \
        --set pretrain.weight_decay=0.5 --out experiments/results/sink_emergence_lr1e-2_wd0.5_1200.json

``--set`` changes one field of the study's θ_o config (``model.*`` or ``pretrain.*``) through
:func:`sinkprobe.pipeline.study.with_overrides`, as ``sinkprobe study --set`` does, so every variant in
the sink table of docs/sink_research_log.md is one command here and one whole study there.

The probe's variations are its own options, passed to the library as arguments (nothing of
the library is patched):

- ``--salad-share N``: θ_o's everyday text gains a "word salad" genre N times over (the four
  default genres once each): a fixed heading, then 20-40 words drawn i.i.d. from a Zipf law
  over the everyday vocabulary, so no earlier token helps predict the next one (Ziming Liu's
  unigram toy; Guo et al.'s dormant heads). ``--backcopy P`` makes it Guo et al.'s
  Bigram-Backcopy task: after each word, with probability P, a trigger word and a copy of an
  earlier word follow; ``--lags K`` gives it K such rules, the k-th trigger copying the word k
  back;
- ``--no-bos``: every packed row loses its leading BOS, so a first-token sink cannot be a key
  bias on BOS (``--save-model`` keeps the final θ_o for ``experiments/sink_inputs.py``).

    python experiments/sink_emergence.py --salad-share 2 --backcopy 0.2 --steps 600 --every 300 \
        --set pretrain.lr=1e-2 --set pretrain.weight_decay=0.5 \
        --out experiments/results/sink_emergence_lr1e-2_wd0.5_backcopy.json
    python experiments/sink_emergence.py --no-bos --steps 600 --every 300 --set pretrain.lr=1e-2 \
        --set pretrain.weight_decay=0.5 --save-model runs/probes/no_bos --out experiments/results/sink_no_bos.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from sinkprobe.analysis import KEY_CLASSES, attention_by_key_class
from sinkprobe.data.sources import load_corpus
from sinkprobe.data.synthetic import everyday_words
from sinkprobe.data.tokenizer import load_tokenizer
from sinkprobe.eval.table import evaluate_memorization, forget_prompts
from sinkprobe.layout import StudyLayout
from sinkprobe.models.hooked import open_bridge
from sinkprobe.models.io import atomic_write_json, save_checkpoint
from sinkprobe.pipeline.study import Study, StudyConfig, first_token_sink, with_overrides
from sinkprobe.training.pretrain import ModelConfig, PretrainConfig, pretrain_original

WORDS = everyday_words()
ZIPF = [1 / (rank + 1) for rank in range(len(WORDS))]
# not everyday words, so each means one thing only: trigger k copies the word k back
TRIGGERS = ("ditto", "redux", "anew", "encore", "bis", "iterum", "denuo", "rursus")
assert not set(TRIGGERS) & set(WORDS)


def word_salad(rng: random.Random, backcopy: float = 0.0, lags: int = 1) -> str:
    """One salad passage; with ``backcopy`` P, after each word trigger k and the word k back follow."""
    words = []
    for word in rng.choices(WORDS, ZIPF, k=rng.randint(20, 40)):
        words.append(word)
        if rng.random() < backcopy:
            lag = rng.randint(1, min(lags, len(words))) if lags > 1 else 1  # one lag draws nothing: earlier runs replay
            words += [TRIGGERS[lag - 1], words[-lag]]
    return "Heard in passing: " + " ".join(words) + "."


def salad_genres(share: int, backcopy: float, lags: int) -> tuple:
    """The salad genre ``share`` times over, as ``general_passages``' extra genres."""
    if share < 0 or not 0 <= backcopy < 1 or not 1 <= lags <= len(TRIGGERS):
        raise SystemExit(f"--salad-share N ≥ 0, 0 ≤ --backcopy P < 1, 1 ≤ --lags K ≤ {len(TRIGGERS)}")
    if lags > 1 and not backcopy:
        raise SystemExit("--lags K needs --backcopy P > 0: the copy rules fire with probability P")
    return (lambda rng: word_salad(rng, backcopy, lags),) * share


def variant(cfg: StudyConfig, overrides: list[str], **run) -> tuple[ModelConfig, PretrainConfig]:
    """The study's θ_o configs with ``--set`` overrides; ``run`` (steps, save_every) belongs to this
    script's own flags."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section, name = key.split(".", 1)[0], key.rsplit(".", 1)[-1]
        if "=" in item and section not in ("model", "pretrain"):  # a malformed item is with_overrides' to refuse
            raise SystemExit(f"--set {section}.…: only model.* and pretrain.* fields can be changed here")
        if section == "pretrain" and name in run:
            raise SystemExit(f"--set {key}: give it as --{'every' if name == 'save_every' else name} instead")
    try:
        cfg = with_overrides(cfg, overrides)
    except ValueError as err:
        raise SystemExit(f"--set {err}") from None
    return cfg.model, replace(cfg.pretrain, **run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--study", default="runs/embedded", help="study folder whose world/ is used")
    ap.add_argument("--steps", type=int, default=3600, help="total steps of the run (cosine schedule over these)")
    ap.add_argument("--every", type=int, default=600, help="measure α(0) every this many steps")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a field of θ_o's config: model.n_layers=6, pretrain.lr=1e-2, … (repeatable)",
    )
    ap.add_argument("--salad-share", type=int, default=0, help="copies of the word-salad genre (default 0: none)")
    ap.add_argument("--backcopy", type=float, default=0.0, help="salad: chance of a copy rule after each word")
    ap.add_argument("--lags", type=int, default=1, help="salad: number of copy rules (trigger k copies k back)")
    ap.add_argument("--no-bos", action="store_true", help="train on packed rows without their leading BOS")
    ap.add_argument("--save-model", type=Path, default=None, help="keep the final θ_o as a checkpoint here")
    ap.add_argument("--out", default="experiments/results/sink_emergence.json")
    args = ap.parse_args()
    if args.every < 1 or args.steps < args.every or args.steps % args.every:
        raise SystemExit(f"--steps ({args.steps}) must be a positive multiple of --every ({args.every})")
    study, cfg = Path(args.study), StudyConfig()
    # before any work: bad flags fail fast
    model_cfg, pretrain = variant(cfg, args.set, steps=args.steps, save_every=args.every)
    extra = salad_genres(args.salad_share, args.backcopy, args.lags)
    corpus = load_corpus("embedded", study)
    tok = load_tokenizer(StudyLayout(study).tokenizer)
    books, everyday = Study(cfg, study, Path("training/embedded")).pretraining_text(corpus, extra)
    curve = []
    with tempfile.TemporaryDirectory() as tmp:
        for stop in range(args.every, args.steps + 1, args.every):
            model, summary = pretrain_original(
                books, tok, model_cfg, pretrain, Path(tmp) / "state", fresh_documents=everyday, stop_after=stop,
                row_start_bos=not args.no_bos,
            )  # fmt: skip
            save_checkpoint(model, tok, Path(tmp) / "model", {"kind": "original", "steps": stop})
            sink = first_token_sink(Path(tmp) / "model", corpus)
            point = {
                "step": stop,
                "tokens": stop * pretrain.batch_size * pretrain.seq_len,
                "train_seconds": summary["train_seconds"],
                "loss": summary["losses"][-1],
                "alpha0_per_layer": sink["sink_score_per_layer"],
                "strongest_head": max(max(row) for row in sink["sink_score_per_head"]),
                "sink_rate_per_layer": sink["sink_rate_per_layer"],
            }
            if stop == args.steps:  # a sink is only useful on a θ_o that still memorises the books
                mem = evaluate_memorization(model, tok, corpus, None, cfg.eval)
                point.update(
                    forget_knowmem=mem["ue_knowmem"], forget_verbmem=mem["ue_verbmem"], retain_knowmem=mem["ut_knowmem"]
                )
                # where the attention that misses the first token goes instead, per layer (head mean)
                shares = attention_by_key_class(open_bridge(Path(tmp) / "model"), forget_prompts(tok, corpus, None, 64))
                point["attention_by_key_class_per_layer"] = [
                    {c: round(float(v), 4) for c, v in zip(KEY_CLASSES, layer)} for layer in shares.mean(1)
                ]
            curve.append(point)
            print(json.dumps(point), flush=True)
            result = {
                "model": asdict(model_cfg),
                "pretrain": asdict(pretrain),
                "salad": {"share": args.salad_share, "backcopy": args.backcopy, "lags": args.lags},
                "row_start_bos": not args.no_bos,
                "torch_threads": torch.get_num_threads(),
                "sink_inputs": sink["sink_inputs"],
                "curve": curve,
            }
            atomic_write_json(Path(args.out), result)  # written after every point: a stopped run keeps its curve
        if args.save_model is not None:
            card = {"kind": "probe: θ_o", "model": asdict(model_cfg), "pretrain": asdict(pretrain)}
            save_checkpoint(model, tok, args.save_model, card | {"row_start_bos": not args.no_bos})


if __name__ == "__main__":
    main()
