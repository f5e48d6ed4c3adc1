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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.tokenizer import load_tokenizer
from sinkprobe.guards import read_json, refuse_custom_code

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
        raise ValueError(
            f"{DEVICE_ENV}={name} but this torch sees no CUDA device: unset it, or install a CUDA build of torch"
        )
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
    """Write model + tokenizer + run card to ``folder`` atomically (a finished folder is swapped in whole).

    Only a sinkprobe checkpoint (a folder with a run card) or an empty folder is ever replaced:
    anything else at ``folder`` is the user's, and is refused before the write."""
    folder = Path(folder)
    refuse_foreign_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / RUN_CARD, run_card)
    except BaseException:  # a full disk or a Ctrl-C: leave no hidden half-checkpoint beside the target
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    match_umask(tmp)
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def match_umask(folder: Path) -> None:
    """Give ``folder`` and its files the user's umask, like every other file sinkprobe writes:
    mkdtemp (and transformers' weight writer) make private ones."""
    os.chmod(folder, 0o777 & ~_UMASK)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~_UMASK)


def is_checkpoint(folder: str | Path) -> bool:
    """A folder sinkprobe wrote (it carries a run card)."""
    return (Path(folder) / RUN_CARD).is_file()


def refuse_foreign_target(folder: Path) -> None:
    """A checkpoint may replace an earlier checkpoint or an empty folder, nothing else."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FileExistsError(f"{folder} exists and is not a folder: choose another output path (nothing was written)")
    if folder.is_dir() and any(folder.iterdir()) and not is_checkpoint(folder):
        raise FileExistsError(
            f"{folder} exists and is not a sinkprobe checkpoint (no {RUN_CARD}): choose a new or empty folder; "
            "sinkprobe never replaces a folder it did not write"
        )


def check_checkpoint_target(out: Path, inputs: list[Path], study: Path | None = None, overwrite: bool = False) -> None:
    """Before any work: refuse an output folder that is or holds one of this run's inputs, is an
    existing folder of the study (its checkpoints are the study's inputs), is not sinkprobe's,
    or is a finished checkpoint (replaced only with ``overwrite``)."""
    target = out.resolve()
    for given in inputs:
        if target == given.resolve() or target in given.resolve().parents:
            raise FileExistsError(
                f"--out {out} is or holds this run's input {given}: write the checkpoint to another folder"
            )
    if study is not None and study.resolve() in target.parents and out.exists():
        raise FileExistsError(
            f"--out {out} is part of the study {study}: write the checkpoint to a folder outside it, or a new one"
        )
    refuse_foreign_target(out)
    if is_checkpoint(out) and not overwrite:
        raise FileExistsError(
            f"{out} already holds a finished checkpoint: choose another --out, or pass --overwrite to replace it"
        )


def read_run_card(folder: str | Path) -> dict:
    path = Path(folder) / RUN_CARD
    if not path.is_file():
        return {}
    card = read_json(path, f"restore it, or delete the checkpoint {Path(folder)} and re-create it")
    if not isinstance(card, dict):
        raise ValueError(
            f"{path} is not a run card (a JSON object): restore it, "
            f"or delete the checkpoint {Path(folder)} and re-create it"
        )
    return card


def require_model_folder(folder: str | Path) -> Path:
    """A local model folder sinkprobe can open: config.json, safetensors weights, no code of its own."""
    folder = Path(folder)
    if not folder.exists() and _looks_like_hub_id(str(folder)):
        raise FileNotFoundError(  # a typo looks the same as a Hub id: the message serves both
            f"no folder {folder}: if it is a Hugging Face Hub id, sinkprobe never downloads; fetch it with "
            f"`huggingface-cli download {folder} --local-dir DIR` and give DIR"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder (no config.json): give the path of a checkpoint "
            "written by sinkprobe or by `save_pretrained`"
        )
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in (*folder.glob("*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")))
        found = f"it has {', '.join(pickles)} (pickle)" if pickles else "it has no weights"
        raise FileNotFoundError(
            f"{folder} has no .safetensors weights ({found}): sinkprobe loads safetensors only, never pickle; "
            "convert it once where you trust the file: "
            "AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, safe_serialization=True)"
        )
    refuse_custom_code(folder)
    return folder


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def load_checkpoint(
    folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Open a local causal-LM folder offline (safetensors, no remote code) with its tokenizer.

    Refuses a folder whose tokenizer is larger than the model's embedding table, the
    mismatch that otherwise surfaces later as an index error deep inside a forward pass.
    """
    folder = require_model_folder(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True
        ).to(device)
    except SafetensorError as e:
        raise ValueError(
            f"the weights in {folder} are damaged ({e}): re-create or re-download that checkpoint"
        ) from None
    tokenizer = load_tokenizer(folder)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"tokenizer in {folder} has {len(tokenizer)} tokens but the model embeds only "
            f"{model.get_input_embeddings().num_embeddings}: the tokenizer belongs to another model; "
            "save the model together with the tokenizer it was trained with"
        )
    model.eval()
    return model, tokenizer
