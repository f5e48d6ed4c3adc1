"""Does θ_o's first-token sink grow with training? α(0) per layer along one long run.

Trains the embedded θ_o (same world, model and data stream as `sinkprobe study`) for
``--steps`` steps, stopping every ``--every`` steps to measure Gu et al.'s α(0) per layer
and the sink rate (ε = 0.3) on the study's clean D_f KnowMem prompts. The run resumes
from its own state between checkpoints, so the curve is that of one uninterrupted run
with a cosine schedule over ``--steps``; at the last step it also scores KnowMem/VerbMem
(a sink only helps on a θ_o that still memorises) and, per layer, where the attention goes
(first token / self / previous / delimiters / other: :mod:`sinkprobe.analysis.key_classes`).
Writes benchmarks/results/sink_emergence.json.

    python benchmarks/sink_emergence.py --study runs/embedded --steps 3600 --every 600
    python benchmarks/sink_emergence.py --steps 1200 --every 300 --set pretrain.lr=1e-2 \
        --set pretrain.weight_decay=0.5 --out benchmarks/results/sink_emergence_lr1e-2_wd0.5_1200.json

``--set`` changes one field of the study's θ_o config (``model.*`` or ``pretrain.*``) through
:func:`sinkprobe.study.with_overrides`, as ``sinkprobe study --set`` does, so every variant in
the sink table of docs/sink_research_log.md is one command here and one whole study there.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from sinkprobe.analysis import KEY_CLASSES, attention_by_key_class
from sinkprobe.data import synthetic
from sinkprobe.data.sources import load_corpus
from sinkprobe.data.tokenizer import load_tokenizer
from sinkprobe.eval.table import evaluate_memorization, forget_prompts
from sinkprobe.models.hooked import open_bridge
from sinkprobe.models.io import atomic_write_json, save_checkpoint
from sinkprobe.study import Study, StudyConfig, first_token_sink, with_overrides
from sinkprobe.training.pretrain import ModelConfig, PretrainConfig, pretrain_original


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
    ap.add_argument("--out", default="benchmarks/results/sink_emergence.json")
    args = ap.parse_args()
    study, cfg = Path(args.study), StudyConfig()
    model_cfg, pretrain = variant(
        cfg, args.set, steps=args.steps, save_every=args.every
    )  # before any work: bad flags fail fast
    corpus = load_corpus("embedded", study)
    tok = load_tokenizer(study / "world" / "tokenizer")
    books, everyday = Study(cfg, study, Path("training/embedded")).pretraining_text(corpus)
    curve = []
    with tempfile.TemporaryDirectory() as tmp:
        for stop in range(args.every, args.steps + 1, args.every):
            model, summary = pretrain_original(
                books, tok, model_cfg, pretrain, Path(tmp) / "state", fresh_documents=everyday, stop_after=stop
            )
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
                "everyday_genres": [genre.__name__ for genre in synthetic._GENRES],
                "torch_threads": torch.get_num_threads(),
                "sink_inputs": sink["sink_inputs"],
                "curve": curve,
            }
            atomic_write_json(Path(args.out), result)  # written after every point: a stopped run keeps its curve


if __name__ == "__main__":
    main()
