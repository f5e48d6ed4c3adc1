"""How many θ_o pretraining steps of a study's config fit SECONDS on this machine.

Times the study's own pretraining loop (its world, batches and fresh everyday text, on the
default device) for a few steps after a warm-up, and prints min(configured steps,
SECONDS / seconds per step). run.sh uses it so that the GPU study fits its one call on
whatever card it gets; the step count used lands in θ_o's card like every other field.

    python benchmarks/gpu_study/fit_steps.py CONFIG SECONDS STUDY_DIR   # CONFIG: training/study/gpu.toml
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from sinkprobe.pipeline.study import Study, StudyConfig, load_study_config
from sinkprobe.training.pretrain import pretrain_original


def seconds_per_step(cfg: StudyConfig, study_dir: Path, warmup: int = 10, timed: int = 30) -> float:
    """Seconds per pretraining step over steps ``warmup``..``warmup + timed`` (after kernels warm
    up), as the loop itself times them: batches and fresh text included, state saves and the
    model's construction not (they happen once, not per step)."""
    study = Study(cfg, study_dir, Path("training/embedded"), log=lambda _: None)
    corpus, tok, _ = study.world()  # the study's own world stage: the study reuses it
    books, everyday = study.pretraining_text(corpus)
    run = replace(cfg.pretrain, save_every=10**9)
    with tempfile.TemporaryDirectory() as state:
        _, first = pretrain_original(
            books, tok, cfg.model, run, state, progress=False, stop_after=warmup, fresh_documents=everyday
        )
        _, then = pretrain_original(
            books, tok, cfg.model, run, state, progress=False, stop_after=warmup + timed, fresh_documents=everyday
        )
    return (then["train_seconds"] - first["train_seconds"]) / timed


def fitting_steps(cfg: StudyConfig, seconds: float, per_step: float) -> int:
    if seconds <= 0 or per_step <= 0:
        raise ValueError(f"SECONDS and the measured step time must be positive, got {seconds} and {per_step}")
    return max(1, min(cfg.pretrain.steps, int(seconds / per_step)))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    config, seconds, study_dir = argv
    cfg = load_study_config(config)
    per_step = seconds_per_step(cfg, Path(study_dir))
    steps = fitting_steps(cfg, float(seconds), per_step)
    print(f"θ_o: {per_step:.4f} s per step; {steps} of {cfg.pretrain.steps} steps fit {seconds} s", file=sys.stderr)
    print(steps)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
