"""θ_o's fine-tuning throughput on a pretrained base: real (non-pad) tokens per second of the
study's own loop (``finetune_original``), fp32 against bf16 autocast, every layer against
the top 10 only; not a test.

Each variant runs ``--steps`` steps from a fresh state after a 2-step warm-up (in a fresh
process, so variants do not share allocator state); ``--rounds`` rounds interleave the variants
and the median per step is reported, with the ratio to fp32 / every layer.

    # writes benchmarks/results/finetune_speed.json
    .venv/bin/python benchmarks/finetune_speed.py --study runs/embedded
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

OUT = Path(__file__).parent / "results" / "finetune_speed.json"
VARIANTS = {"fp32_all_layers": (False, 0), "bf16_all_layers": (True, 0), "bf16_top10_layers": (True, 10)}


def measure(variant: str, study: Path, steps: int) -> dict:
    """One variant in this process: seconds per step and real tokens per second."""
    import torch

    from sinkprobe.data.tokenizer import load_tokenizer
    from sinkprobe.data.types import read_corpus
    from sinkprobe.pipeline.study import Study, StudyConfig, default_recipes
    from sinkprobe.training.finetune import batch_rows, finetune_original

    torch.set_num_threads(2)
    cfg = StudyConfig()
    s = Study(cfg, study, default_recipes(cfg.base), log=lambda _: None)
    corpus, tok = (
        read_corpus(study / "world" / "corpus.json"),
        load_tokenizer(study / "world" / "tokenizer"),
    )  # read only
    books, _ = s.pretraining_text(corpus)
    bf16, top = VARIANTS[variant]
    ft = replace(cfg.finetune, bf16=bf16, trainable_layers=top, save_every=10_000)
    lengths = [len(tok(d).input_ids) + 1 for d in books if d.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        finetune_original(s.base_folder(), books, ft, Path(tmp) / "warm", progress=False, stop_after=2)
        _, _, summary = finetune_original(
            s.base_folder(), books, ft, Path(tmp) / "timed", progress=False, stop_after=steps
        )
    tokens = sum(lengths[i] for step in range(steps) for i in batch_rows(len(lengths), step, ft))
    return {
        "variant": variant,
        "seconds_per_step": summary["train_seconds"] / steps,
        "tokens_per_second": tokens / summary["train_seconds"],
        "steps": steps,
        "batch_size": ft.batch_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--study",
        type=Path,
        default=Path("runs/embedded"),
        help="a study folder whose world to read (base smollm2-135m)",
    )
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.study, args.steps)))
        return
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", v, "--study", str(args.study), "--steps", str(args.steps)]
            runs[v].append(
                json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                )
            )
    entries = [
        {
            "variant": v,
            "seconds_per_step": statistics.median(r["seconds_per_step"] for r in rs),
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in rs),
            "rounds": len(rs),
        }
        for v, rs in runs.items()
    ]
    ref = entries[0]["seconds_per_step"]
    for e in entries:
        e["speedup_vs_fp32_all_layers"] = round(ref / e["seconds_per_step"], 3)
        print(
            f"{e['variant']:18s} {e['seconds_per_step']:.2f} s/step  {e['tokens_per_second']:.0f} tokens/s  "
            f"×{e['speedup_vs_fp32_all_layers']:.2f}"
        )
    report = {
        "what": "θ_o fine-tuning on both books of the study's world (SmolLM2-135M base), 2 threads",
        "steps_per_run": args.steps,
        "entries": entries,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_name(f".{OUT.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, OUT)


if __name__ == "__main__":
    main()
