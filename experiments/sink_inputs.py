"""Is a θ_o's first-token sink bound to its inputs, or to the BOS token? α(0) on five input kinds.

Gu et al. find a trained LM's sink on the first token whatever the text (their Sink metric
reads 64-token windows of training data with no BOS, and the sink holds on random tokens).
This measures α(0) per layer and the sink rate (ε = 0.3) of one checkpoint on: the study's
clean D_f KnowMem prompts (the foundation's criterion), windows of the forget book and of
fresh everyday text (BOS + ``--length`` − 1 tokens, packed as θ_o reads them, and
``--length`` tokens with no BOS, as Gu et al. read them), and random tokens with and
without a leading BOS.

    python experiments/sink_inputs.py runs/embedded/models/original --out experiments/results/sink_inputs_default.json

Measured (docs/sink_research_log.md): the deep layers of no θ_o sink on any
of these inputs, and the first-layer sink of the lr-1e-2 θ_o lives on the BOS token — it is
gone on random tokens without BOS — so it is a BOS key bias, not the positional sink of
pretrained LLMs.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from sinkprobe.analysis.sinks import detect_sinks
from sinkprobe.data.sources import load_corpus
from sinkprobe.data.synthetic import general_passages
from sinkprobe.data.types import UnlearningCorpus
from sinkprobe.eval.table import forget_prompts
from sinkprobe.models.hooked import open_bridge
from sinkprobe.models.io import atomic_write_json


def windows(tok, texts: list[str], length: int, n: int, bos: bool = True) -> list[list[int]]:
    """``n`` rows of ``length`` tokens cut from the texts joined as one stream (θ_o's packing),
    each led by BOS unless ``bos`` is False (Gu et al.'s windows of training text)."""
    stream = [i for text in texts for i in tok(text + "\n", add_special_tokens=False)["input_ids"]]
    step = length - 1 if bos else length
    lead = [tok.bos_token_id] if bos else []
    return [lead + stream[s : s + step] for s in range(0, len(stream) - step + 1, step)][:n]


def input_sets(
    tok, corpus: UnlearningCorpus, length: int = 64, n: int = 64, seed: int = 0
) -> dict[str, list[list[int]]]:
    """The seven input kinds as id lists; random tokens are drawn from the non-special vocabulary."""
    rng = random.Random(seed)
    special = set(tok.all_special_ids)
    ordinary = [i for i in range(len(tok)) if i not in special]
    draw = lambda k: [rng.choice(ordinary) for _ in range(k)]  # noqa: E731
    book, everyday = list(corpus.forget.passages), general_passages(f"sink-inputs-{seed}", 4 * n)
    return {
        "knowmem_prompts": forget_prompts(tok, corpus, None, n),
        "forget_book": windows(tok, book, length, n),
        "everyday": windows(tok, everyday, length, n),
        "random_tokens": [[tok.bos_token_id, *draw(length - 1)] for _ in range(n)],
        "forget_book_no_bos": windows(tok, book, length, n, bos=False),
        "everyday_no_bos": windows(tok, everyday, length, n, bos=False),
        "random_tokens_no_bos": [draw(length) for _ in range(n)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "model", type=Path, help="checkpoint folder (HF Llama + tokenizer), e.g. runs/embedded/models/original"
    )
    ap.add_argument("--study", type=Path, default=Path("runs/embedded"), help="study folder whose world/ gives D_f")
    ap.add_argument("--length", type=int, default=64, help="tokens per window and random row (Gu et al.: 64)")
    ap.add_argument("--n", type=int, default=64, help="rows per input kind")
    ap.add_argument("--out", type=Path, default=Path("experiments/results/sink_inputs.json"))
    args = ap.parse_args()
    if args.length < 2 or args.n < 1:
        raise SystemExit("--length must be ≥ 2 and --n ≥ 1")
    bridge = open_bridge(args.model)  # a missing or foreign folder fails here, before any work
    corpus = load_corpus("embedded", args.study)
    result = {"model": str(args.model), "length": args.length, "inputs": {}}
    for name, seqs in input_sets(bridge.tokenizer, corpus, args.length, args.n).items():
        view = detect_sinks(bridge, seqs, max_key=1).first_token()
        result["inputs"][name] = {"rows": len(seqs), **view}
        print(
            f"{name:22s} rows {len(seqs):3d}  α(0) per layer {view['sink_score_per_layer']}  "
            f"sink rate {view['sink_rate_per_layer']}"
        )
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:  # a wrong path or a foreign folder: one line, nothing written
        raise SystemExit(str(err)) from None
