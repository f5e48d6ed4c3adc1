"""Analysis cost vs plain forwards (DESIGN "Numbers the project lives by"); not a test.

ΔA + per-position logits + value norms for 256 poisoned/clean pairs at one layer
(:func:`sinkprobe.analysis.analyse_pairs`) against, on the same padded batches of both copies:

  (a) bare_forward      the bridge's forward up to that layer (``stop_at_layer=layer+1``), no hooks
  (b) run_with_cache    the bridge's full ``run_with_cache`` (every hook cached), per batch
  (c) hf_attentions     HF ``output_attentions=True`` with eager attention, every layer

The layer is the last one (the paper's Fig. 3–5 layer), where a forward "up to the layer" is
the whole model: logits need the whole model anyway.

Each run is a fresh process (warm-up, then one timed run); ``--repeats`` rounds interleave the
variants. Time: median over rounds.
Memory: peak resident set growth during a run — the kernel's high-water mark (VmHWM) is reset
through /proc/self/clear_refs before the run and read after it, minus the RSS before it; this
sees torch's allocations, which tracemalloc does not (Linux only).

    .venv/bin/python benchmarks/analysis_bench.py            # writes benchmarks/results/analysis.json
    .venv/bin/python benchmarks/analysis_bench.py --model runs/embedded/models/original \
        --variants analysis bare_forward --out benchmarks/results/analysis_smollm2.json   # the SmolLM2 θ_o
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

N_SAMPLES, BATCH, TRIGGER = 256, 32, [7, 8, 9, 10, 11]
VARIANTS = ("analysis", "bare_forward", "run_with_cache", "hf_attentions")
OUT = Path(__file__).parent / "results" / "analysis.json"


def build_model(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = 2048
    words = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    ).save_pretrained(folder)


def make_pairs(vocab: int, bos: int):
    from sinkprobe.analysis import PoisonedPairs

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(48, 96, (N_SAMPLES,), generator=g)
    clean = [[bos] + torch.randint(12, vocab, (int(n) - 1,), generator=g).tolist() for n in lengths]
    poisoned = [c[:1] + TRIGGER + c[1:] for c in clean]
    return PoisonedPairs(clean, poisoned, [list(range(1, 1 + len(TRIGGER)))] * N_SAMPLES)


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure(variant: str, folder: Path, repeats: int) -> dict:
    """Run one variant in this process; returns its entry."""
    torch.set_num_threads(2)
    from sinkprobe.analysis import analyse_pairs
    from sinkprobe.data.batching import pad_batch
    from sinkprobe.models.hooked import open_bridge

    bridge = open_bridge(folder)
    pairs = make_pairs(bridge.cfg.d_vocab, bridge.tokenizer.bos_token_id)
    layer = bridge.cfg.n_layers - 1
    batches = [
        pad_batch(seqs[i : i + BATCH], 0) for seqs in (pairs.clean, pairs.poisoned) for i in range(0, N_SAMPLES, BATCH)
    ]
    if variant == "hf_attentions":
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()

        def work():
            for ids, mask in batches:
                hf(ids, attention_mask=mask, output_attentions=True)

    elif variant == "analysis":

        def work():
            analyse_pairs(bridge, pairs, layer, batch_size=BATCH)

    elif variant == "bare_forward":

        def work():
            for ids, mask in batches:
                bridge(ids, attention_mask=mask, stop_at_layer=layer + 1)

    else:

        def work():
            for ids, mask in batches:
                bridge.run_with_cache(ids, attention_mask=mask)

    libc = ctypes.CDLL("libc.so.6")
    times, peaks = [], []
    with torch.inference_mode():
        work()  # warm-up
        for _ in range(repeats):
            libc.malloc_trim(0)  # hand freed heap back, or reused warm-up pages hide the growth
            Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
            before = _kib("VmRSS")
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
            peaks.append(_kib("VmHWM") - before)
    return {
        "variant": variant,
        "device": "cpu",
        "median_seconds": statistics.median(times),
        "peak_bytes": max(peaks),
        "samples": N_SAMPLES,
        "layer": layer,
        "n_params": sum(p.numel() for p in bridge.original_model.parameters()),
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--model", type=Path, help="a local model folder (default: a tiny random Llama built here)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="which variants to time")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.model, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or Path(tmp) / "bench-llama"
        if args.model is None:
            build_model(folder)
        # Rounds interleave the variants, so load from other processes on a shared machine
        # hits all of them alike instead of whichever ran at a busy moment.
        runs: dict[str, list[dict]] = {v: [] for v in args.variants}
        for _ in range(args.repeats):
            for v in args.variants:
                cmd = [sys.executable, __file__, "--variant", v, "--model", str(folder), "--repeats", "1"]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[v].append(json.loads(out.strip().splitlines()[-1]))
        entries = []
        for v, rs in runs.items():
            entries.append(
                rs[0]
                | {
                    "median_seconds": statistics.median(r["median_seconds"] for r in rs),
                    "peak_bytes": max(r["peak_bytes"] for r in rs),
                    "repeats": len(rs),
                }
            )
            print(
                f"{v:15s} {entries[-1]['median_seconds']:.3f} s  {entries[-1]['peak_bytes'] / 2**20:.1f} MiB",
                flush=True,
            )
    base = next(e for e in entries if e["variant"] == "bare_forward")
    for e in entries:
        e["ratio_to_bare_forward"] = round(e["median_seconds"] / base["median_seconds"], 3)
    report = {
        "what": "ΔA + per-position logits + value norms, 256 poisoned/clean pairs, last layer",
        "model": str(args.model)
        if args.model
        else "LlamaConfig(d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab=2048), random init",
        "threads": 2,
        "batch_size": BATCH,
        "memory": "peak RSS growth during a run: VmHWM (reset via /proc/self/clear_refs) minus VmRSS before",
        "entries": entries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    for e in entries:
        print(f"{e['variant']:15s} ×{e['ratio_to_bare_forward']:.2f} of bare_forward")


if __name__ == "__main__":
    main()
