"""θ_o's training loop, shared by pretraining from scratch and fine-tuning a base on the books.

One step: learning rate → loss (the caller's forward, under its autocast) → backward → clip →
AdamW. The loop resumes from the newest state saved with the same ``meta`` and saves every
``save_every`` steps and at the end (a finished state keeps the weights only), so an interrupted
run continues where it stopped and ends at the same weights.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from sinkprobe.training.state import resume_state, save_state


def lr_at(step: int, cfg, total: int | None = None) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``min_lr_ratio · lr`` at step ``total``
    (default ``cfg.steps``): θ_o's schedule, from scratch or fine-tuned from a base."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, (total or cfg.steps) - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_original_steps(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    loss_at: Callable[[int], torch.Tensor],
    lr: Callable[[int], float],
    total: int,
    *,
    state_dir: str | Path,
    meta: dict,
    save_every: int,
    desc: str,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Run steps ``[resumed step, total)`` of ``loss_at(step)``, clipping the gradient norm of
    ``params`` (the trained parameters) to 1; ``stop_after`` ends early at that step (after
    saving: how tests interrupt a run). Returns losses, train_seconds, steps_done."""
    state_dir = Path(state_dir)
    saved = resume_state(state_dir, meta, model, opt) or {"step": 0, "losses": [], "seconds": 0.0}
    start, losses, seconds = saved["step"], saved["losses"], saved["seconds"]
    model.train()
    bar = tqdm(range(start, total), desc=desc, disable=not progress, initial=start, total=total)
    t0 = time.perf_counter()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr(step)
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(round(loss.item(), 5))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = step + 1
        if done % save_every == 0 or done == total or done == stop_after:
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            record = {"meta": meta, "step": done, "losses": losses, "seconds": seconds}
            save_state(state_dir, model, None if done == total else opt, record)  # finished: no moments to keep
        if done == stop_after:
            break
    model.eval()
    return {"losses": losses, "train_seconds": round(seconds, 2), "steps_done": len(losses)}
