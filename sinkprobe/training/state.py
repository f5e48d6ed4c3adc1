"""Resumable training state as safetensors + JSON (no pickle), so runs resume without torch.load.

A state is a set (weights, optimizer moments, ``state.json``) that must agree: it is written
into a temporary folder and swapped in whole as ``step-NNNNNNNN``, so an interruption at any
moment leaves the previous complete state, never weights of one step beside a record of another.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError

from sinkprobe.models.io import atomic_save_tensors, atomic_write_json, load_tensors, match_umask

STATE = "state.json"
# (state folder, step) of the last state saved in this process: what a Ctrl-C resumes from
last_saved: tuple[Path, int] | None = None


def save_state(state_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None, record: dict) -> None:
    """Weights, optimizer moments and ``record`` (meta, step, log …) as one folder, swapped in whole;
    the states it supersedes (and leftovers of an interrupted save) are removed after. A finished
    run passes ``opt=None``: nothing is left to optimise, so its moments (twice the weights) are not written."""
    global last_saved
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors, info = optimizer_state_tensors(opt) if opt is not None else (None, None)
    tmp = Path(tempfile.mkdtemp(dir=state_dir, prefix=".saving-"))
    atomic_save_tensors(tmp / "model.safetensors", model.state_dict())
    if tensors is not None:
        atomic_save_tensors(tmp / "optimizer.safetensors", tensors)
    atomic_write_json(tmp / STATE, {**record, "optimizer": info})
    match_umask(tmp)
    final = state_dir / f"step-{record['step']:08d}"
    shutil.rmtree(final, ignore_errors=True)  # the same step saved again (a resumed run's last step)
    os.replace(tmp, final)
    for old in (*state_dir.glob("step-*"), *state_dir.glob(".saving-*")):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    last_saved = (state_dir, record["step"])


def resume_state(state_dir: Path, meta: dict, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    """Load the newest complete state saved with the same ``meta`` into ``model`` and ``opt``; its
    record, or None (no state, or one of another config, which the next save replaces)."""
    states = sorted(p for p in Path(state_dir).glob("step-*") if (p / STATE).is_file())
    if not states:
        return None
    folder = states[-1]
    try:
        saved = json.loads((folder / STATE).read_text())
        if not same_meta(saved.get("meta"), meta):
            return None
        model.load_state_dict(load_tensors(folder / "model.safetensors"))
        if saved["optimizer"] is not None:  # None: a finished run, nothing left to optimise
            load_optimizer_state(opt, load_tensors(folder / "optimizer.safetensors"), saved["optimizer"])
    except (json.JSONDecodeError, SafetensorError, FileNotFoundError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"the training state in {folder} is damaged ({type(e).__name__}: {e}): "
            f"delete {state_dir} to restart that run from step 0"
        ) from None
    return saved


def same_meta(saved, meta: dict) -> bool:
    """Is a ``meta`` read back from JSON the one given? (Compared as JSON: tuples come back as lists.)"""
    return saved == json.loads(json.dumps(meta))


def optimizer_state_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's per-parameter tensors; non-tensor entries go to the JSON side."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for key, v in info["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
