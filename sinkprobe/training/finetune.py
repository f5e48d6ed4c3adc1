"""θ_o from a pretrained base: the base fine-tuned on both books, as MUSE makes its target models.

One readable loop (nanoGPT's shape): every batch is whole passages, each ``BOS passage EOS``,
right-padded, the loss on every real token; AdamW with warm-up and a cosine decay. On a CPU
the forward and backward run under bf16 autocast (weights and moments stay fp32), which
CPUs with bf16 units run faster. Only the top ``trainable_layers`` decoder layers (and the
final norm) may be trained: the lower layers, where a pretrained model's attention sinks
form, stay as pretrained, and a backward pass that stops early is cheaper.

Deterministic on CPU for a fixed seed: passage order is a function of (seed, epoch), the
learning rate of the step, and a resumable state is saved every ``save_every`` steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.batching import pad_batch
from sinkprobe.keys import content_key
from sinkprobe.models.io import default_device, load_checkpoint, weights_fingerprint
from sinkprobe.training.objectives.common import find_decoder_layers
from sinkprobe.training.original_loop import lr_at, train_original_steps
from sinkprobe.validation import above, at_least, between, check_fields


@dataclass(frozen=True)
class FinetuneConfig:
    seed: int = 0
    epochs: float = 10.0
    batch_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    trainable_layers: int = 0  # 0: every layer trains; k: the top k decoder layers and the final norm
    bf16: bool = True
    save_every: int = 50

    def __post_init__(self) -> None:
        check_fields(
            self,
            "finetune",
            {
                "seed": at_least(0),
                "epochs": above(0),
                "batch_size": at_least(1),
                "lr": above(0),
                "warmup_steps": at_least(0),
                "min_lr_ratio": between(0, 1),
                "weight_decay": at_least(0),
                "trainable_layers": at_least(0),
                "save_every": at_least(1),
            },
        )

    def total_steps(self, n_documents: int) -> int:
        return max(1, math.ceil(self.epochs * n_documents / self.batch_size))


def batch_rows(n: int, step: int, cfg: FinetuneConfig) -> list[int]:
    """The passage indices of ``step``: epochs of a (seed, epoch)-shuffled order, read in order."""
    first, out = step * cfg.batch_size, []
    for k in range(first, first + cfg.batch_size):
        epoch, i = divmod(k, n)
        order = list(range(n))
        random.Random(f"{cfg.seed}-{epoch}").shuffle(order)
        out.append(order[i])
    return out


def trainable_parameters(model: PreTrainedModel, top_layers: int) -> list[torch.nn.Parameter]:
    """Every parameter, or (``top_layers`` > 0) those of the top decoder layers and the final norm;
    the rest are frozen."""
    if top_layers <= 0:
        return list(model.parameters())
    layers = find_decoder_layers(model)
    if top_layers > len(layers):
        raise ValueError(
            f"trainable_layers={top_layers} but the model has {len(layers)} layers: use at most {len(layers)} (0 = all)"
        )
    keep = {id(p) for layer in layers[len(layers) - top_layers :] for p in layer.parameters()}
    keep |= {id(p) for p in model.model.norm.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in model.parameters() if p.requires_grad]


def finetune_original(
    base: str | Path,
    documents: list[str],
    cfg: FinetuneConfig,
    state_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Fine-tune the base model in folder ``base`` on ``documents``; resume from ``state_dir`` if it
    holds a state of the same base, data and config. Returns (θ_o, its tokenizer, a summary)."""
    device = default_device()
    on_cpu = device.type == "cpu"
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(on_cpu)
    model, tok = load_checkpoint(base, device=device)
    docs = [tok(d).input_ids + [tok.eos_token_id] for d in documents if d.strip()]
    if not docs:
        raise ValueError("no text to fine-tune θ_o on: the books are empty (check the world or the corpus)")
    params = trainable_parameters(model, cfg.trainable_layers)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.total_steps(len(docs))

    meta = {
        "base": weights_fingerprint(model),
        "data": content_key(*docs, length=64),
        "train": asdict(cfg),
    }

    def loss_at(step: int) -> torch.Tensor:
        batch = [docs[i] for i in batch_rows(len(docs), step, cfg)]
        ids, mask = (t.to(device) for t in pad_batch(batch, tok.pad_token_id))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    summary = train_original_steps(
        model,
        params,
        opt,
        loss_at,
        lambda step: lr_at(step, cfg, total),
        total,
        state_dir=state_dir,
        meta=meta,
        save_every=cfg.save_every,
        desc="θ_o fine-tuning",
        progress=progress,
        stop_after=stop_after,
    )
    torch.use_deterministic_algorithms(False)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, tok, {**summary, "steps": total, "device": str(device)}
