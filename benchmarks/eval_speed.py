"""Evaluation speed of one checkpoint (target: UE / BE / UT of one model ≤ 2 min on 2 CPU cores).

On the same D_f KnowMem prompts (few-shot, as MUSE builds them), times in one run:
plain ``model.generate`` one prompt at a time (the baseline), sinkprobe's batched greedy
generation, and batched generation reusing the KV cache of the prefix every prompt shares;
each variant's outputs are compared with the baseline's. Then the bf16 model against fp32
(KnowMem and VerbMem means, the metric's tolerance), and one full UE / BE / UT evaluation
(clean KnowMem + VerbMem on D_f, KnowMem on D_r, BE at the prefix) as the study runs it.
Medians over ``--repeats``. Writes benchmarks/results/eval_speed.json.

    python benchmarks/eval_speed.py --study runs/smollm2 --n 32
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from sinkprobe.data.poison import DEFAULT_TRIGGER, Trigger
from sinkprobe.data.sources import load_corpus
from sinkprobe.eval.generation import greedy_generate
from sinkprobe.eval.memorization import (
    KNOWMEM_MAX_NEW_TOKENS,
    KNOWMEM_STOP_STRINGS,
    cut_at_stop_strings,
    knowmem_prompt,
)
from sinkprobe.eval.table import EvalSettings, evaluate_memorization, prompt_encoder
from sinkprobe.models.io import atomic_write_json, load_checkpoint


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--study", default="runs/embedded", help="study folder with world/ and the checkpoint")
    ap.add_argument("--model", default="", help="checkpoint folder (default: the study's θ_o)")
    ap.add_argument("--n", type=int, default=32, help="KnowMem prompts timed per variant")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/eval_speed.json")
    args = ap.parse_args()
    study = Path(args.study)
    folder = Path(args.model) if args.model else study / "models" / "original"
    corpus = load_corpus("embedded", study)
    model, tok = load_checkpoint(folder)
    encode = prompt_encoder(tok, None)
    prompts = [encode(knowmem_prompt(q.question, corpus.forget.knowmem_icl)) for q in corpus.forget.knowmem[: args.n]]
    kw = dict(max_new_tokens=KNOWMEM_MAX_NEW_TOKENS, progress=False, stop_strings=KNOWMEM_STOP_STRINGS)

    def plain():  # the baseline: model.generate, one prompt at a time, no stop strings
        out = []
        with torch.inference_mode():
            for p in prompts:
                ids = torch.tensor([p])
                new = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=KNOWMEM_MAX_NEW_TOKENS,
                    pad_token_id=tok.pad_token_id,
                )[0, len(p) :]
                out.append(tok.decode(new, skip_special_tokens=True))
        return out

    cut = lambda outs: [cut_at_stop_strings(o).strip() for o in outs]  # noqa: E731
    t_plain, ref = timed(plain, args.repeats)
    t_batched, batched = timed(lambda: greedy_generate(model, tok, prompts, batch_size=16, **kw), args.repeats)
    t_cached, cached = timed(
        lambda: greedy_generate(model, tok, prompts, batch_size=16, reuse_prefix=True, **kw), args.repeats
    )
    settings = EvalSettings(batch_size=16, n_boot=200)
    trigger = Trigger(DEFAULT_TRIGGER, "prefix")
    t_full, fp32 = timed(lambda: evaluate_memorization(model, tok, corpus, trigger, settings), 1)
    bf16_model = load_checkpoint(folder, dtype=torch.bfloat16)[0]
    t_full_bf16, bf16 = timed(lambda: evaluate_memorization(bf16_model, tok, corpus, trigger, settings), 1)
    metrics = ("ue_knowmem", "ue_verbmem", "be_knowmem", "be_verbmem", "ut_knowmem")
    result = {
        "model": str(folder),
        "model_params": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "knowmem_prompts": len(prompts),
        "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
        "seconds": {
            "plain_generate_one_by_one": round(t_plain, 2),
            "batched": round(t_batched, 2),
            "batched_prefix_cache": round(t_cached, 2),
        },
        "speedup_vs_plain": {
            "batched": round(t_plain / t_batched, 2),
            "batched_prefix_cache": round(t_plain / t_cached, 2),
        },
        "same_outputs_as_plain": {"batched": cut(batched) == cut(ref), "batched_prefix_cache": cut(cached) == cut(ref)},
        "full_evaluation_seconds": {"fp32": round(t_full, 1), "bf16": round(t_full_bf16, 1)},
        "full_evaluation_metrics": {"fp32": {k: fp32[k] for k in metrics}, "bf16": {k: bf16[k] for k in metrics}},
        "bf16_max_abs_difference": round(max(abs(fp32[k] - bf16[k]) for k in metrics), 2),
        "target": "full_evaluation_seconds ≤ 120",
    }
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
