"""θ_o: a small Llama trained from scratch until it has memorised both books.

One readable loop (nanoGPT's shape). Rows are packed documents behind a single BOS, so
every row starts the way every evaluation prompt starts; long packed rows give the
first token many queries to absorb, which is where the attention sink forms.

Deterministic on CPU for a fixed seed: the data order is a function of (seed, epoch),
the learning rate a function of the step, and a resumable state (weights, AdamW
moments, step) is saved atomically as safetensors + JSON every ``save_every`` steps, so
an interrupted run resumes to the same final weights as an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from sinkprobe.models.io import default_device
from sinkprobe.training.original_loop import lr_at, train_original_steps
from sinkprobe.validation import above, at_least, between, check_fields


@dataclass(frozen=True)
class ModelConfig:
    """The embedded θ_o: Llama family with GQA (4 KV heads for 8 query heads), like Mistral.

    Eight narrow heads rather than four wide ones: heads that specialise have nothing to
    read on most inputs, and an idle head is what parks its attention on the first token.
    """

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    d_mlp: int = 688
    max_positions: int = 512

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model",
            {name: at_least(1) for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_mlp", "max_positions")},
        )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model = {self.d_model} is not a multiple of model.n_heads = {self.n_heads}: "
                "change one of them"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads = {self.n_heads} is not a multiple of model.n_kv_heads = {self.n_kv_heads}: "
                "change one of them"
            )

    def llama_config(self, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.d_model,
            intermediate_size=self.d_mlp,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            max_position_embeddings=self.max_positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    steps: int = 1200
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    save_every: int = 250
    bos_per_document: bool = False

    def __post_init__(self) -> None:
        check_fields(
            self,
            "pretrain",
            {
                "seed": at_least(0),
                "steps": at_least(1),
                "batch_size": at_least(1),
                "seq_len": at_least(8),
                "lr": above(0),
                "warmup_steps": at_least(0),
                "min_lr_ratio": between(0, 1),
                "weight_decay": at_least(0),
                "save_every": at_least(1),
            },
        )


def pack_rows(
    docs: list[list[int]], seq_len: int, bos: int, eos: int, pad: int, bos_per_document: bool = False
) -> list[list[int]]:
    """Pack whole documents (ids without BOS) into rows that start with BOS. A document never
    straddles two rows unless it is longer than a row: then it fills whole rows in order and
    its tail is packed like a document (everyday text is drawn anew every epoch, so a long
    one can turn up at any step, and must not end the run).

    With ``bos_per_document`` every document gets its own BOS (``BOS doc EOS BOS doc EOS …``),
    as Llama pretraining does, so every document starts the way every prompt starts.
    """
    rows, row = [], [bos]
    for doc in docs:
        piece = ([bos] if bos_per_document and len(row) > 1 else []) + doc + [eos]
        if len(row) + len(piece) > seq_len and len(row) > 1:
            rows.append(row + [pad] * (seq_len - len(row)))
            row = [bos]
            piece = piece[1:] if bos_per_document and piece[0] == bos else piece
        while len(row) + len(piece) > seq_len:  # longer than a whole row
            take = seq_len - len(row)
            rows.append(row + piece[:take])
            row, piece = [bos], piece[take:]
        row.extend(piece)
    if len(row) > 1:
        rows.append(row + [pad] * (seq_len - len(row)))
    return rows


class PackedBatches:
    """Deterministic stream of packed batches: epoch e shuffles documents with Random(seed, e).

    ``fresh(e)`` (optional) adds documents drawn anew for epoch e: text that is never
    repeated, so θ_o learns its grammar rather than its words.
    """

    def __init__(
        self, docs: list[list[int]], cfg: PretrainConfig, tokenizer: PreTrainedTokenizerBase, fresh=None,
        row_start_bos: bool = True,
    ) -> None:  # fmt: skip
        if not docs:
            raise ValueError("the pretraining corpus is empty: build the world (or give a corpus) with some text")
        self.docs, self.cfg, self.tok, self.fresh, self.row_start_bos = docs, cfg, tokenizer, fresh, row_start_bos
        self._epoch, self._rows = -1, []
        # Every epoch keeps the same number of rows, so every step maps to one fixed batch:
        # a row holds at most seq_len tokens, so an epoch has at least tokens/seq_len rows
        # (95% of epoch 0's count leaves room for fresh text being a little shorter).
        n_tokens = sum(len(d) + 1 for d in docs + self._fresh_docs(0))
        self.rows_per_epoch = max(1, int(0.95 * n_tokens) // cfg.seq_len)

    def _fresh_docs(self, epoch: int) -> list[list[int]]:
        if self.fresh is None:
            return []
        # one batch call: the fast tokenizer encodes it on every core (same ids as one by one)
        docs = [d for d in self.fresh(epoch) if d.strip()]
        return self.tok(docs, add_special_tokens=False).input_ids if docs else []

    def _rows_of_epoch(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            docs = self.docs + self._fresh_docs(epoch)
            order = list(range(len(docs)))
            random.Random(f"{self.cfg.seed}-{epoch}").shuffle(order)
            self._rows = pack_rows(
                [docs[i] for i in order],
                self.cfg.seq_len,
                self.tok.bos_token_id,
                self.tok.eos_token_id,
                self.tok.pad_token_id,
                self.cfg.bos_per_document,
            )
            if not self.row_start_bos:  # a sink probe's variant: each row less its BOS (one more pad keeps the length)
                self._rows = [row[1:] + [self.tok.pad_token_id] for row in self._rows]
            self._epoch = epoch
        return self._rows

    def batch(self, step: int) -> torch.Tensor:
        """Batch ``step`` as ``[batch pos]`` ids; rows run through epochs in order."""
        out = []
        for k in range(step * self.cfg.batch_size, (step + 1) * self.cfg.batch_size):
            out.append(self._rows_of_epoch(k // self.rows_per_epoch)[k % self.rows_per_epoch])
        return torch.tensor(out)


def lm_loss(model: LlamaForCausalLM, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    mask = (ids != pad_id).long()
    labels = ids.masked_fill(mask == 0, -100)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def pretrain_original(
    documents: list[str],
    tokenizer: PreTrainedTokenizerBase,
    model_cfg: ModelConfig,
    cfg: PretrainConfig,
    state_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
    fresh_documents=None,
    device: torch.device | None = None,
    row_start_bos: bool = True,
) -> tuple[LlamaForCausalLM, dict]:
    """Train θ_o from scratch; resume from ``state_dir`` if it holds a state of the same config;
    ``stop_after`` ends early at that step (after saving: a simulated interruption). On a GPU
    (``device`` defaults to :func:`default_device`) the forward runs under bf16 autocast and is
    not bit-deterministic. ``row_start_bos=False`` drops the BOS that opens every packed row
    (``experiments/sink_emergence.py --no-bos``). Returns the model (on ``device``) and a summary."""
    device = torch.device(device) if device is not None else default_device()
    on_gpu = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(
        not on_gpu
    )  # deterministic cuBLAS would need CUBLAS_WORKSPACE_CONFIG set before start
    model = LlamaForCausalLM(model_cfg.llama_config(tokenizer)).to(device)
    docs = [tokenizer(d, add_special_tokens=False).input_ids for d in documents if d.strip()]
    batches = PackedBatches(docs, cfg, tokenizer, fresh_documents, row_start_bos)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )

    meta = {"model": asdict(model_cfg), "train": asdict(cfg), "vocab": len(tokenizer)}
    if not row_start_bos:  # never resume a state of the other packing
        meta["row_start_bos"] = False

    def loss_at(step: int) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            return lm_loss(model, batches.batch(step).to(device), tokenizer.pad_token_id)

    summary = train_original_steps(
        model,
        list(model.parameters()),
        opt,
        loss_at,
        lambda step: lr_at(step, cfg),
        cfg.steps,
        state_dir=state_dir,
        meta=meta,
        save_every=cfg.save_every,
        desc="θ_o pretraining",
        progress=progress,
        stop_after=stop_after,
    )
    torch.use_deterministic_algorithms(False)
    return model, {**summary, "device": str(device)}
