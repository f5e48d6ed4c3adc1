"""Resumable training state as safetensors + JSON (no pickle), so runs resume without torch.load."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sinkprobe.models.io import atomic_save_tensors, atomic_write_json, load_tensors

STATE = "state.json"


def save_state(state_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, record: dict) -> None:
    """Weights and optimizer moments, then ``record`` (meta, step, log …) as ``state.json``.
    The JSON is written last: it is what marks the tensors beside it as a complete state."""
    tensors, info = optimizer_state_tensors(opt)
    atomic_save_tensors(state_dir / "model.safetensors", model.state_dict())
    atomic_save_tensors(state_dir / "optimizer.safetensors", tensors)
    atomic_write_json(state_dir / STATE, {**record, "optimizer": info})


def resume_state(state_dir: Path, meta: dict, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    """Load a state saved with the same ``meta`` into ``model`` and ``opt``; its record, or None
    (no state, or one of another config, which the next save replaces)."""
    path = state_dir / STATE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if not same_meta(saved.get("meta"), meta):
        return None
    model.load_state_dict(load_tensors(state_dir / "model.safetensors"))
    load_optimizer_state(opt, load_tensors(state_dir / "optimizer.safetensors"), saved["optimizer"])
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
