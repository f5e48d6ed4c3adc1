"""Checkpoint folders: Hugging Face ``save_pretrained`` (safetensors only) + a JSON run card.

Every write is atomic (written beside the target, then ``os.replace``), so an interrupted
run never leaves a half-written checkpoint or card where a finished one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.tokenizer import load_tokenizer

RUN_CARD = "run_card.json"
DEVICE_ENV = "SINKPROBE_DEVICE"
_UMASK = os.umask(0)
os.umask(_UMASK)


def default_device() -> torch.device:
    """Where the study trains and evaluates: ``$SINKPROBE_DEVICE`` if set (``cpu``, ``cuda``,
    ``cuda:1``), else the first GPU when torch sees one, else the CPU."""
    name = os.environ.get(DEVICE_ENV, "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{DEVICE_ENV}={name!r} is not a device: use cpu, cuda or cuda:N (or unset it)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{DEVICE_ENV}={name} but this torch sees no CUDA device: unset it, or install a CUDA build of torch")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV}={name}: sinkprobe runs on cpu or cuda")
    return device


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; results are for reading
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # clone: tied weights (embedding = unembedding) share storage, which safetensors refuses
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes, bytes): what a cached state or
    reference computed from this model is keyed by, so another model's cache is never reused."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_checkpoint(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path, run_card: dict
) -> Path:
    """Write model + tokenizer + run card to ``folder`` atomically (a finished folder is swapped in whole)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / RUN_CARD, run_card)
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def read_run_card(folder: str | Path) -> dict:
    path = Path(folder) / RUN_CARD
    return json.loads(path.read_text()) if path.is_file() else {}


def require_model_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder (no config.json): give the path of a checkpoint "
            "written by sinkprobe or by `save_pretrained`"
        )
    return folder


def load_checkpoint(
    folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Open a local causal-LM folder offline (safetensors, no remote code) with its tokenizer.

    Refuses a folder whose tokenizer is larger than the model's embedding table, the
    mismatch that otherwise surfaces later as an index error deep inside a forward pass.
    """
    folder = require_model_folder(folder)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True
    ).to(device)
    tokenizer = load_tokenizer(folder)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"tokenizer in {folder} has {len(tokenizer)} tokens but the model embeds only "
            f"{model.get_input_embeddings().num_embeddings}: the tokenizer belongs to another model; "
            "save the model together with the tokenizer it was trained with"
        )
    model.eval()
    return model, tokenizer
