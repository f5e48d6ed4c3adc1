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


def _rows_present(t: torch.Tensor) -> torch.Tensor:
    return ~torch.isnan(t.reshape(t.shape[0], -1)).any(1)


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
    # each rank holds the references of its own shard: rows r, r+2, r+4 … and NaN elsewhere
    state = out.with_name(f".{out.name}.state")
    for rank in (0, 1):
        refs = load_tensors(state / f"references-rank{rank}-of-2.safetensors")
        for name in ("ll_f", "norms_u_f"):
            have = _rows_present(refs[name])
            assert have.tolist() == [i % 2 == rank for i in range(len(have))], name
        assert _rows_present(refs["norms_o_p"]).any()  # this rank's share of D_p
    both = [_rows_present(load_tensors(state / f"references-rank{r}-of-2.safetensors")["norms_o_p"]) for r in (0, 1)]
    assert torch.equal(both[0] ^ both[1], torch.ones_like(both[0]))  # D_p split, every poisoned row exactly once
