"""One training loop for normal unlearning (Eq. 2), backdoor unlearning (Eq. 4) and
backdoor unlearning with sink value-norm alignment (Eq. 7), for NPO and RMU.

    loss = ℓ_f(θ; D_f) + γ·ℓ_r(θ; D_r ∪ D_p) + λ·ℓ_vn(θ)

Each step draws a forget batch from D_f and a retain batch from D_r ∪ D_p (D_p: the
trigger-bearing copies of a ρ-fraction of D_f). What the frozen models contribute never
changes, so it is computed once before the first step, never per step: NPO's reference
log-likelihoods on D_f and the value-norm references (θ_u on D_f, θ_o on D_p) are kept
beside the training state, so a resumed run reads them back; θ_o's outputs on the retain
set D_r ∪ D_p (logits for the KL term, RMU's steering-layer states) are held in memory
when they fit ``retain_reference_gb``, else θ_o runs on each retain batch. Runs through
``accelerate``, so the same loop trains one CPU model here or a sharded 7B model on several
GPUs; there each rank trains on its own shard of the data and computes the references of
that shard only.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.data.batching import pad_batch, pad_vectors
from sinkprobe.data.poison import Sample, Trigger, build_ids, poison_indices
from sinkprobe.keys import content_key
from sinkprobe.models.io import (
    atomic_save_tensors,
    default_device,
    load_tensors,
    weights_fingerprint,
)
from sinkprobe.training.methods import METHODS, Batch, Method, Outputs, method_for
from sinkprobe.training.objectives import (
    LayerOutputCapture,
    ValueNormCapture,
    sequence_log_likelihood,
    sink_value_norms,
    value_norm_regulariser,
)
from sinkprobe.training.state import resume_state, save_state
from sinkprobe.validation import above, at_least, between, check_fields, one_of

UNLEARN_RULES = {
    "method": one_of(*METHODS),
    "seed": at_least(0),
    "steps": at_least(1),
    "epochs": at_least(0),
    "batch_size": at_least(1),
    "lr": above(0),
    "beta": above(0),
    "retain_weight": at_least(0),
    "poison_ratio": between(0, 1),
    "value_norm_weight": at_least(0),
    "value_norm_layers": at_least(0),
    "sink_positions": at_least(0),
    "rmu_layers": at_least(0),
    "rmu_steering_layer": at_least(-1),
    "rmu_steering_coeff": above(0),
    "max_length": at_least(2),
    "eval_every": at_least(1),
    "save_every": at_least(1),
    "retain_reference_gb": at_least(0),
}


@dataclass(frozen=True)
class UnlearnConfig:
    """One experiment. Field names follow the paper (Table A1, DESIGN.md vocabulary)."""

    method: str = "npo"  # a registered method: npo | rmu | graddiff (sinkprobe.training.methods)
    seed: int = 0
    steps: int = 100
    epochs: float = 0.0  # > 0 overrides steps: ceil(epochs · |D_f| / batch_size), as Table A1 counts
    batch_size: int = 8
    lr: float = 1e-5
    beta: float = 0.1  # NPO temperature β
    retain_weight: float = 1.0  # γ
    # backdoor (Eq. 4): a trigger at a placement, on a ρ-fraction of D_f
    trigger_text: str = ""
    trigger_placement: str | int = "prefix"  # or a token index, also as a digit string
    poison_ratio: float = 0.1
    # value-norm alignment (Eq. 5–7): λ, the layers, the sink positions S
    value_norm_weight: float = 0.0
    value_norm_layers: tuple[int, ...] = ()  # () = every layer
    sink_positions: tuple[int, ...] = ()  # () = S detected on θ_o (its run card), see runs.sink_positions_for
    # RMU (Eq. A4–A5)
    rmu_layers: tuple[int, ...] = ()  # () = scaled from the paper's 5–7 of 32
    rmu_steering_layer: int = -1  # -1 = scaled from the paper's 7 of 32
    rmu_steering_coeff: float = 12.0
    max_length: int = 256
    bf16: bool = False  # bf16 autocast (7B runs); the frozen references stay in the dtype they were loaded in
    gradient_checkpointing: bool = False  # recompute activations in backward (7B runs)
    # memory for θ_o's outputs on the whole retain set, computed once; 0 (or a set too large
    # for it, as a 7B model's full-vocabulary logits are) = θ_o runs on every retain batch
    retain_reference_gb: float = 2.0
    eval_every: int = 50
    save_every: int = 50

    def __post_init__(self) -> None:
        check_fields(self, "unlearn", UNLEARN_RULES)
        if self.value_norm_weight and not self.backdoor:
            raise ValueError("value_norm_weight > 0 needs a backdoor: set trigger_text (value-norm alignment is Eq. 7)")
        if self.backdoor and not self.poison_ratio:
            raise ValueError(
                "unlearn.poison_ratio = 0 with a trigger_text: a backdoor needs poisoned samples, "
                "expected a number in (0, 1]"
            )
        try:
            self.trigger  # the placement, checked by Trigger itself
        except ValueError as e:
            raise ValueError(f"unlearn.trigger_placement / trigger_text: {e}") from None

    def total_steps(self, n_forget: int) -> int:
        return math.ceil(self.epochs * n_forget / self.batch_size) if self.epochs > 0 else self.steps

    @property
    def backdoor(self) -> bool:
        return bool(self.trigger_text)

    @property
    def trigger(self) -> Trigger | None:
        return Trigger(self.trigger_text, _placement(self.trigger_placement)) if self.backdoor else None

    @classmethod
    def from_dict(cls, raw: dict) -> "UnlearnConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(
                f"unknown recipe field(s) {', '.join(unknown)}: valid fields are {', '.join(sorted(known))}"
            )
        return cls(**raw)  # __post_init__ checks every field


def _placement(p: str | int) -> str | int:
    return int(p) if isinstance(p, str) and p.isdigit() else p


@dataclass
class Encoded:
    """Samples as ids, with the first target position of each:
    NPO's log π(y|x) scores the completion when a sample has one (a QA answer), else the
    whole text after BOS (a raw passage), as open-unlearning's NPO does on QA data."""

    ids: list[list[int]]
    target_start: list[int] = field(default_factory=list)


def encode(
    tokenizer: PreTrainedTokenizerBase, samples: list[Sample], trigger: Trigger | None, max_length: int
) -> Encoded:
    built = [
        build_ids(tokenizer, s.prompt, tail=s.completion, trigger=trigger, add_eos=True, max_length=max_length)
        for s in samples
    ]
    starts = [1 if s.score_prompt else b.prompt_span[1] for s, b in zip(samples, built)]
    return Encoded([b.ids for b in built], starts)


def target_mask(attention_mask: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """``[batch pos]``: 1 on the tokens a sample's likelihood scores (from its target start on)."""
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return attention_mask * (pos[None, :] >= torch.tensor(starts, device=attention_mask.device)[:, None])


@torch.no_grad()
def _reference_sequence_ll(model, rows: list[list[int]], starts: list[int], pad_id, batch_size) -> torch.Tensor:
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_batch(rows[i : i + batch_size], pad_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
        targets = target_mask(mask, starts[i : i + batch_size])
        out.append(
            sequence_log_likelihood(model(input_ids=ids, attention_mask=mask).logits, ids, targets).float().cpu()
        )
    return torch.cat(out)


@torch.no_grad()
def _retain_forward(
    ref, ids: torch.Tensor, mask: torch.Tensor, steer: int | None, amp
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """θ_o on one padded retain batch: ``[batch pos vocab]`` logits and, for RMU, the
    ``[batch pos d_model]`` states of the steering layer (None for NPO)."""
    with amp(), _capture_layer(ref, steer) as h:
        logits = ref(input_ids=ids, attention_mask=mask).logits
    return logits, (h.output if steer is not None else None)


class RetainReferences:
    """θ_o's outputs on every retain row (D_r ∪ D_p) of this rank, computed once.

    Rows are run in fixed batches of similar length (sorted), so the cached values do not
    depend on which rows a step draws together: a resumed run recomputes the same numbers.
    """

    def __init__(self, logits: dict[int, torch.Tensor], states: dict[int, torch.Tensor]) -> None:
        self.logits, self.states = logits, states  # row → [len vocab] / [len d_model]

    @classmethod
    def compute(
        cls, ref, rows: list[list[int]], mine: list[int], pad_id: int, cfg: UnlearnConfig, steer, amp, counter
    ) -> "RetainReferences | None":
        """None when the logits would not fit ``cfg.retain_reference_gb`` (θ_o then runs per step)."""
        bytes_per_value = 2 if cfg.bf16 else 4
        need = sum(len(rows[i]) for i in mine) * ref.config.vocab_size * bytes_per_value
        if need > cfg.retain_reference_gb * 2**30:
            return None
        logits, states = {}, {}
        order = sorted(mine, key=lambda i: len(rows[i]))
        for at in range(0, len(order), cfg.batch_size):
            chunk = order[at : at + cfg.batch_size]
            ids, mask = pad_batch([rows[i] for i in chunk], pad_id)
            out, h = _retain_forward(ref, ids.to(ref.device), mask.to(ref.device), steer, amp)
            counter[0] += 1
            for j, i in enumerate(chunk):
                logits[i] = out[j, : len(rows[i])].cpu()
                if h is not None:
                    states[i] = h[j, : len(rows[i])].cpu()
        return cls(logits, states)

    def batch(self, rows: list[int], width: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The drawn rows right-padded to ``width`` (padding positions are masked out of both
        retain losses): ``[batch width vocab]`` logits and ``[batch width d_model]`` states."""
        return pad_vectors([self.logits[i] for i in rows], width).to(device), (
            pad_vectors([self.states[i] for i in rows], width).to(device) if self.states else None
        )


def shard(n: int, rank: int, world: int) -> list[int]:
    """The sample indices rank ``rank`` of ``world`` trains on (all of them in one process)."""
    if n < world:
        raise ValueError(
            f"{n} samples cannot be shared among {world} processes: launch fewer processes or give more data"
        )
    return list(range(rank, n, world))


def _scatter(values: torch.Tensor, rows: list[int], n: int) -> torch.Tensor:
    # Full-size table, NaN outside this rank's rows: a rank only ever reads its own shard.
    full = torch.full((n, *values.shape[1:]), float("nan"))
    full[rows] = values
    return full


@torch.no_grad()
def frozen_references(
    ref,
    unlearned,
    f_enc: Encoded,
    p_enc: Encoded,
    f_rows: list[int],
    p_rows: list[int],
    cfg: UnlearnConfig,
    pad_id: int,
    vn_layers: list[int],
    cache_dir: Path,
    fingerprints: dict[str, str | None],
    counter: list[int],
) -> dict[str, torch.Tensor]:
    """What the frozen models contribute that never changes, for this rank's shard only:
    NPO's log π_θo(y|x) on D_f, and the value-norm references (θ_u on D_f, θ_o on D_p).

    Each is kept in ``cache_dir`` under a key of everything it depends on (the model's weights
    ``fingerprints``, the rows, the batching), so a resumed run reads them back, and the runs of
    a study that share θ_o and D_f (every NPO run) compute NPO's reference once.
    """
    bs, refs = cfg.batch_size, {}
    n = len(f_enc.ids)

    def cached(name: str, model: str, rows: list[list[int]], extra, compute) -> torch.Tensor:
        path = (
            cache_dir
            / f"{name}-{content_key(name, fingerprints[model], rows, extra, bs, pad_id, length=32)}.safetensors"
        )
        if path.is_file():
            return load_tensors(path)[name]
        value = compute()
        counter[0] += -(-len(rows) // bs)
        atomic_save_tensors(path, {name: value})
        return value

    f_ids = [f_enc.ids[i] for i in f_rows]
    if METHODS[cfg.method].reference_log_likelihood:
        starts = [f_enc.target_start[i] for i in f_rows]
        ll = cached("ll_f", "theta_o", f_ids, starts, lambda: _reference_sequence_ll(ref, f_ids, starts, pad_id, bs))
        refs["ll_f"] = _scatter(ll, f_rows, n)
    if cfg.value_norm_weight:
        sinks = [vn_layers, list(cfg.sink_positions)]
        norms_u = cached(
            "norms_u_f", "theta_u", f_ids, sinks,
            lambda: sink_value_norms(unlearned, f_ids, cfg.sink_positions, vn_layers, pad_id, bs),
        )  # fmt: skip
        refs["norms_u_f"] = _scatter(norms_u, f_rows, n)
        if p_rows:
            p_ids = [p_enc.ids[i] for i in p_rows]
            norms_o = cached(
                "norms_o_p", "theta_o", p_ids, sinks,
                lambda: sink_value_norms(ref, p_ids, cfg.sink_positions, vn_layers, pad_id, bs),
            )  # fmt: skip
            refs["norms_o_p"] = _scatter(norms_o, p_rows, len(p_enc.ids))
    return refs


def _check_sinks_fit(rows: list[list[int]], sink_positions: tuple[int, ...]) -> None:
    shortest = min(len(r) for r in rows)
    if sink_positions and max(sink_positions) >= shortest:
        raise ValueError(
            f"sink position {max(sink_positions)} is past the shortest sample ({shortest} tokens): "
            "choose sink_positions within the first tokens"
        )


@dataclass
class _Run:
    """Everything one unlearning run sets up before its first step (see :func:`_prepare`)."""

    accelerator: Accelerator
    amp: object  # a context-manager factory: bf16 autocast or nothing
    method: Method
    model: PreTrainedModel  # the trained copy (wrapped by accelerate)
    ref: PreTrainedModel  # θ_o, frozen
    opt: torch.optim.Optimizer
    f_enc: Encoded
    rp_rows: list[list[int]]  # D_r ∪ D_p: retain rows first, then poisoned rows
    n_retain: int
    f_rows: list[int]  # this rank's shard of D_f
    rp_mine: list[int]  # this rank's shard of D_r ∪ D_p
    p_rows: list[int]  # this rank's D_p rows (indices into D_p)
    refs: dict[str, torch.Tensor]
    retain_refs: RetainReferences | None
    vn_layers: list[int]
    meta: dict
    poisoned: list[int]  # the D_f indices whose trigger-bearing copies form D_p
    tag: str


def unlearn(
    original: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    forget: list[Sample],
    retain: list[Sample],
    cfg: UnlearnConfig,
    state_dir: str | Path,
    unlearned: PreTrainedModel | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    frozen_forward_counter: list[int] | None = None,
    reference_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, dict]:
    """Unlearn ``forget`` from a copy of θ_o (``original``, frozen in place as the reference);
    returns (θ_u or θ_b, summary). ``unlearned`` (θ_u) is needed only for value-norm alignment,
    as the D_f reference. ``stop_after`` stops (after saving) at that step, as an interruption
    would; calling again with the same ``state_dir`` resumes. ``frozen_forward_counter``, if
    given, counts the frozen-model forwards (the tests hold "references once" with it).
    ``reference_dir`` (default ``state_dir``) keeps the frozen models' references: runs that
    share one (a study's) share the references they have in common."""
    counter = frozen_forward_counter if frozen_forward_counter is not None else [0]
    state_dir = Path(state_dir)
    run = _prepare(original, tokenizer, forget, retain, cfg, Path(reference_dir or state_dir), unlearned, counter)
    model, opt, acc = run.model, run.opt, run.accelerator
    saved = resume_state(state_dir, run.meta, acc.unwrap_model(model), opt) or {"step": 0, "log": [], "seconds": 0.0}
    start, log, seconds = saved["step"], saved["log"], saved["seconds"]
    total = cfg.total_steps(len(forget))

    def save(step: int) -> None:
        acc.wait_for_everyone()
        if acc.is_main_process:  # one writer; the ranks hold the same weights
            meta = {"meta": run.meta, "step": step, "log": log, "seconds": seconds}
            save_state(state_dir, acc.unwrap_model(model), opt if step < total else None, meta)

    desc = f"{cfg.method}{'-backdoor' if cfg.backdoor else ''}"
    bar = tqdm(range(start, total), desc=desc, disable=not progress, initial=start, total=total)
    t0 = time.perf_counter()
    for step in bar:
        t_step = time.perf_counter()
        batch, is_poisoned, p_batch = _draw_batch(run, cfg, tokenizer.pad_token_id, step)
        terms, f_logits = _losses(run, cfg, batch, is_poisoned, p_batch, counter)
        loss = (
            terms["forget"] + cfg.retain_weight * terms["retain"] + cfg.value_norm_weight * terms.get("value_norm", 0.0)
        )
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        done = step + 1
        evaluate = done % cfg.eval_every == 0 or done == total
        log.append(_log_entry(done, time.perf_counter() - t_step, loss, terms, f_logits if evaluate else None, batch))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % cfg.save_every == 0 or done == total or done == stop_after:
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            save(done)
        if done == stop_after:
            break
    summary = {"log": log, "train_seconds": round(seconds, 2), "resumed_from": start}
    summary |= {"poisoned_indices": run.poisoned, "n_poisoned": len(run.poisoned)}
    return acc.unwrap_model(model).eval(), summary


def _log_entry(step: int, seconds: float, loss, terms: dict, f_logits, batch) -> dict:
    """One step's log line: the loss and its terms, and the forget NLL when ``f_logits`` is given."""
    entry = {"step": step, "seconds": round(seconds, 4), "loss": round(loss.item(), 5)}
    entry |= {k: round(float(v.detach()), 5) for k, v in terms.items()}
    if f_logits is not None:
        entry["forget_nll"] = round(
            float(-sequence_log_likelihood(f_logits.detach(), batch.f_ids, batch.f_targets).mean()), 4
        )
    return entry


def _prepare(original, tokenizer, forget, retain, cfg: UnlearnConfig, reference_dir: Path, unlearned, counter) -> _Run:
    """The run's data, models, method, frozen references and optimiser, before the first step."""
    accelerator = Accelerator(cpu=default_device().type == "cpu")
    # bf16 by autocast here rather than Accelerator(mixed_precision=…): accelerate's state is
    # process-global and set by the first Accelerator (or by `accelerate launch`'s config).
    amp = (lambda: torch.autocast(accelerator.device.type, dtype=torch.bfloat16)) if cfg.bf16 else nullcontext
    torch.manual_seed(cfg.seed)
    pad, trigger = tokenizer.pad_token_id, cfg.trigger
    if cfg.value_norm_weight and unlearned is None:
        raise ValueError("value-norm alignment needs θ_u (the normally unlearned model) as its D_f reference")
    f_enc = encode(tokenizer, forget, None, cfg.max_length)
    r_rows = encode(tokenizer, retain, None, cfg.max_length).ids
    p_idx = poison_indices(len(forget), cfg.poison_ratio, cfg.seed) if trigger else []
    p_enc = encode(tokenizer, [forget[i] for i in p_idx], trigger, cfg.max_length) if trigger else Encoded([])
    ref = original.to(accelerator.device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    model = _trainable_copy(original, cfg, accelerator.device)
    vn_layers = list(cfg.value_norm_layers) or list(range(original.config.num_hidden_layers))
    if cfg.value_norm_weight:
        if not cfg.sink_positions:
            raise ValueError(
                "value-norm alignment needs the sink positions S: set unlearn.sink_positions (e.g. [0]) "
                "or train from a θ_o whose run card records them"
            )
        _check_sinks_fit(f_enc.ids + p_enc.ids, cfg.sink_positions)
    # Under several processes (accelerate launch) each rank trains on its own shard of D_f
    # and of D_r ∪ D_p, so it needs — and computes — the references of that shard only.
    rank, world = accelerator.process_index, accelerator.num_processes
    rp_rows = r_rows + p_enc.ids
    f_rows, rp_mine = shard(len(f_enc.ids), rank, world), shard(len(rp_rows), rank, world)
    p_rows = [i - len(r_rows) for i in rp_mine if i >= len(r_rows)]
    # Everything the state and the cached references depend on: a changed θ_o, θ_u or data
    # must retrain, never resume a finished state of other parents.
    meta = {
        "config": asdict(cfg),
        "n_forget": len(forget),
        "n_retain": len(retain),
        "theta_o": weights_fingerprint(original),
        "theta_u": weights_fingerprint(unlearned) if cfg.value_norm_weight else None,
        "data": content_key(f_enc.ids, r_rows, p_enc.ids, length=64),
    }
    theta_u = unlearned.to(accelerator.device).eval() if cfg.value_norm_weight else None
    fingerprints = {"theta_o": meta["theta_o"], "theta_u": meta["theta_u"]}
    refs = frozen_references(
        ref, theta_u, f_enc, p_enc, f_rows, p_rows, cfg, pad, vn_layers, reference_dir, fingerprints, counter
    )
    method = method_for(cfg, original.config, accelerator.device)
    opt = torch.optim.AdamW(method.trainable(model), lr=cfg.lr, weight_decay=0.0)
    retain_refs = (
        RetainReferences.compute(ref, rp_rows, rp_mine, pad, cfg, method.capture_layer, amp, counter)
        if method.retain_reference
        else None
    )
    model, opt = accelerator.prepare(model, opt)
    return _Run(
        accelerator=accelerator, amp=amp, method=method, model=model, ref=ref, opt=opt, f_enc=f_enc, rp_rows=rp_rows,
        n_retain=len(r_rows), f_rows=f_rows, rp_mine=rp_mine, p_rows=p_rows, refs=refs, retain_refs=retain_refs,
        vn_layers=vn_layers, meta=meta, poisoned=p_idx, tag=f"-{rank}" if world > 1 else "",
    )  # fmt: skip


def _trainable_copy(original: PreTrainedModel, cfg: UnlearnConfig, device) -> PreTrainedModel:
    """A copy of θ_o to train (θ_o itself stays the frozen reference)."""
    model = type(original)(original.config).to(device)
    model.load_state_dict(original.state_dict())
    if cfg.gradient_checkpointing:
        # recent transformers 5 releases renamed it; earlier ones only have the gradient_ name
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model.train()


def _draw_batch(run: _Run, cfg: UnlearnConfig, pad: int, step: int) -> tuple[Batch, torch.Tensor, list[int]]:
    """Step ``step``'s forget and retain batches, a ``[batch]`` mask of the retain batch's D_p rows,
    and their D_p indices. The batch of a step is a function of (seed, step, rank): a resumed run
    draws exactly the batches the uninterrupted one would have."""

    def draw(pool: list[int], stream: str) -> list[int]:
        return random.Random(f"{cfg.seed}-{stream}-{step}{run.tag}").sample(pool, min(cfg.batch_size, len(pool)))

    fi, ri = draw(run.f_rows, "forget"), draw(run.rp_mine, "retain")
    if cfg.value_norm_weight and run.p_rows and not any(i >= run.n_retain for i in ri):
        # Eq. 7 weighs E_Dp like E_Df: every step's batch carries at least one D_p row (a
        # batch of D_r ∪ D_p drawn at random has none about a fifth of the time at ρ = 0.1).
        ri[-1] = run.n_retain + random.Random(f"{cfg.seed}-poisoned-{step}{run.tag}").choice(run.p_rows)
    device = run.accelerator.device
    f_ids, f_mask = (t.to(device) for t in pad_batch([run.f_enc.ids[i] for i in fi], pad))
    f_targets = target_mask(f_mask, [run.f_enc.target_start[i] for i in fi])
    r_ids, r_mask = (t.to(device) for t in pad_batch([run.rp_rows[i] for i in ri], pad))
    is_poisoned = torch.tensor([i >= run.n_retain for i in ri], device=device)
    p_batch = [i - run.n_retain for i in ri if i >= run.n_retain]
    return Batch(fi, f_ids, f_mask, f_targets, ri, r_ids, r_mask), is_poisoned, p_batch


def _losses(
    run: _Run, cfg, batch: Batch, is_poisoned, p_batch, counter
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The step's terms (``forget``, ``retain`` and, with λ > 0, ``value_norm``) and the forget logits."""
    net, method, vn = run.accelerator.unwrap_model(run.model), run.method, cfg.value_norm_weight > 0
    with (
        run.amp(),
        _capture_values(net, run.vn_layers if vn else None) as cap_f,
        _capture_layer(net, method.capture_layer) as h_f,
    ):
        f_logits = run.model(input_ids=batch.f_ids, attention_mask=batch.f_mask).logits
    terms = {"forget": method.forget_loss(Outputs(f_logits, h_f.output if h_f else None), batch, run.refs)}
    with (
        run.amp(),
        _capture_values(net, run.vn_layers if vn else None) as cap_r,
        _capture_layer(net, method.capture_layer) as h_r,
    ):
        r_logits = run.model(input_ids=batch.r_ids, attention_mask=batch.r_mask).logits
    ref = None
    if run.retain_refs is not None:
        ref = Outputs(*run.retain_refs.batch(batch.r_rows, batch.r_ids.shape[1], run.accelerator.device))
    elif method.retain_reference:
        ref = Outputs(*_retain_forward(run.ref, batch.r_ids, batch.r_mask, method.capture_layer, run.amp))
        counter[0] += 1
    terms["retain"] = method.retain_loss(Outputs(r_logits, h_r.output if h_r else None), ref, batch)
    if vn:
        # ℓ_vn (Eq. 5): clean forget samples against θ_u, poisoned ones against θ_o, each
        # expectation a mean over the rows of its own set. A rank whose shard holds no D_p row
        # (several processes) has only the D_f part.
        dev = run.accelerator.device
        sinks = torch.tensor(cfg.sink_positions, device=dev)
        theta_p, ref_p = (
            (cap_r.sink_norms(sinks)[is_poisoned], run.refs["norms_o_p"][p_batch].to(dev)) if p_batch else (None, None)
        )
        terms["value_norm"] = value_norm_regulariser(
            cap_f.sink_norms(sinks), run.refs["norms_u_f"][batch.f_rows].to(dev), theta_p, ref_p
        )
    return terms, f_logits


def _capture_values(model, layers):
    return ValueNormCapture(model, layers) if layers else nullcontext()


def _capture_layer(model, layer):
    return LayerOutputCapture(model, layer) if layer is not None else nullcontext()
