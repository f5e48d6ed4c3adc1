"""The multi-process path of the training loop, for real: two CPU processes (torchrun, gloo
DDP) run one recipe. Each rank trains on its own shard and computes the frozen references
of that shard only; one rank evaluates and writes the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from tiny_study import RECIPES, tiny_study

from sinkprobe.models.io import load_checkpoint, load_tensors


def test_two_processes_train_on_their_shards_and_write_one_checkpoint(tmp_path, tmp_path_factory):
    study = tiny_study(tmp_path_factory)
    out = tmp_path / "bd2"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__).with_name("keep_state_cli.py")),
        "unlearn",
        str(RECIPES / "npo_backdoor.toml"),
        "--study",
        str(study.folder),
        "--out",
        str(out),
        "--set",
        "unlearn.steps=3",
        "--set",
        "unlearn.batch_size=4",
        "--set",
        "unlearn.value_norm_weight=1.0",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("checkpoint written") == 1
    card = json.loads((out / "run_card.json").read_text())
    assert card["n_processes"] == 2 and len(card["log"]) == 3
    assert "ue_knowmem" in card["metrics"]
    trained, _ = load_checkpoint(out)
    original, _ = load_checkpoint(study.folder / "models" / "original")
    assert any(not torch.equal(p, q) for p, q in zip(trained.state_dict().values(), original.state_dict().values()))
    # each rank computed (and cached) the references of its own shard only: D_f split in
    # halves, D_p split so that every poisoned row is in exactly one rank's cache
    state = out.with_name(f".{out.name}.state")
    sizes = {
        name: sorted(load_tensors(p)[name].shape[0] for p in state.glob(f"{name}-*.safetensors"))
        for name in ("ll_f", "norms_u_f", "norms_o_p")
    }
    assert len(sizes["ll_f"]) == 2 and sizes["ll_f"][1] - sizes["ll_f"][0] <= 1
    assert sizes["norms_u_f"] == sizes["ll_f"]
    assert len(sizes["norms_o_p"]) == 2 and sum(sizes["norms_o_p"]) == card["n_poisoned"]
