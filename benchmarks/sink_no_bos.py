"""Variant of θ_o trained on rows with no BOS: a row starts with whatever text the packing puts first.

With a BOS at every row start, a head can sink on the BOS token's own key (a key bias in
the first layer). Without one, the only way to a first-token sink is a circuit that finds
position 0 first — the sink pretrained LLMs show from their second or third layer on — so
this asks whether that circuit forms at this scale. Trains the study's θ_o (``--set`` as in
sink_emergence.py) with BOS dropped from every packed row and saves it as a checkpoint;
``sink_inputs.py`` then measures it (its ``random_tokens_no_bos`` row is this θ_o's own
kind of input).

    python benchmarks/sink_no_bos.py --steps 600 --set pretrain.lr=1e-2 --set pretrain.weight_decay=0.5 \
        --out runs/probes/no_bos
    python benchmarks/sink_inputs.py runs/probes/no_bos --out benchmarks/results/sink_inputs_no_bos.json

Measured (docs/sink_research_log.md): no sink in any layer on any input.
"""

from __future__ import annotations

import argparse
import runpy
from dataclasses import asdict
from pathlib import Path

import sinkprobe.training.pretrain as pretrain
from sinkprobe.data.sources import load_corpus
from sinkprobe.data.tokenizer import load_tokenizer
from sinkprobe.models.io import save_checkpoint
from sinkprobe.study import Study, StudyConfig

PACK_WITH_BOS = pretrain.pack_rows


def pack_rows_without_bos(docs, seq_len, bos, eos, pad, bos_per_document=False):
    """The study's packing with each row's leading BOS dropped (and one more pad to keep the length)."""
    return [row[1:] + [pad] for row in PACK_WITH_BOS(docs, seq_len, bos, eos, pad, bos_per_document)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, default=Path("runs/embedded"), help="study folder whose world/ is used")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=300, help="save a resumable state every this many steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as sink_emergence.py's --set")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    args = ap.parse_args()
    cfg = StudyConfig()
    variant = runpy.run_path(str(Path(__file__).with_name("sink_emergence.py")))["variant"]
    model_cfg, pretrain_cfg = variant(cfg, args.set, steps=args.steps, save_every=args.every)
    corpus = load_corpus("embedded", args.study)
    tok = load_tokenizer(args.study / "world" / "tokenizer")
    books, everyday = Study(cfg, args.study, Path("training/embedded")).pretraining_text(corpus)
    pretrain.pack_rows = pack_rows_without_bos  # read at call time by PackedBatches
    model, summary = pretrain.pretrain_original(
        books, tok, model_cfg, pretrain_cfg, args.out.with_name(args.out.name + "_state"), fresh_documents=everyday
    )
    save_checkpoint(
        model,
        tok,
        args.out,
        {
            "kind": "probe: θ_o without BOS",
            "model": asdict(model_cfg),
            "pretrain": asdict(pretrain_cfg),
            "loss": summary["losses"][-1],
            "train_seconds": summary["train_seconds"],
        },
    )
    print(f"loss {summary['losses'][-1]:.3f} after {args.steps} steps, {summary['train_seconds']:.0f} s → {args.out}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:  # a wrong path or a foreign folder: one line, nothing written
        raise SystemExit(str(err)) from None
