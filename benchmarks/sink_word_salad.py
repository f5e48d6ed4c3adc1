"""Variant of sink_emergence.py: θ_o's everyday text gains a "word salad" genre.

A salad passage is a fixed heading and then 20-40 words drawn i.i.d. from a Zipf law
over the everyday vocabulary, so no earlier token helps predict the next one: the text
where an idle head's best move is to park on the first token (Ziming Liu's unigram toy;
Guo et al.'s dormant heads). ``--backcopy P`` makes it Guo et al.'s Bigram-Backcopy
task: after each word, with probability P, the trigger word "ditto" and a copy of that
word follow, so a head that copies is needed on the trigger only and dormant elsewhere.
``--lags K`` gives it K such rules, each with its own trigger word: the k-th trigger copies
the word k back, so K copying heads each have one sparse job (natural text's many rare,
trigger-gated dependencies, which may leave many heads of the deeper layers idle).
The genre enters the genre list ``SHARE`` times (the four default genres once each);
every other flag is sink_emergence.py's.

    python benchmarks/sink_word_salad.py 2 --steps 600 --every 300 --set pretrain.lr=1e-2 \
        --set pretrain.weight_decay=0.5 --out benchmarks/results/sink_emergence_lr1e-2_wd0.5_salad.json
    python benchmarks/sink_word_salad.py 2 --backcopy 0.2 --steps 600 --every 300 --set pretrain.lr=1e-2 \
        --set pretrain.weight_decay=0.5 --out benchmarks/results/sink_emergence_lr1e-2_wd0.5_backcopy.json
    python benchmarks/sink_word_salad.py 3 --backcopy 0.3 --lags 8 --steps 600 --every 300 --set pretrain.lr=1e-2 \
        --set pretrain.weight_decay=0.5 --out benchmarks/results/sink_emergence_lr1e-2_wd0.5_backcopy_lags8.json

Measured (docs/sink_research_log.md): plain salad moves the sink from
layer 0 to layer 1; backcopy splits it over layer 0 and one deeper layer (25 % of its heads
at most); with 16 heads or eight copy rules layer 0 keeps 62 % / 50 % of its heads and layer 2
gets 19 % / 12 %; none gives two sink layers, so the genre is not part of the world.
"""

from __future__ import annotations

import random
import runpy
import sys
from pathlib import Path

import sinkprobe.data.synthetic as synthetic

WORDS = sorted(
    {
        w
        for phrase in (
            *synthetic._GENERAL_SUBJECTS,
            *synthetic._GENERAL_VERBS,
            *synthetic._GENERAL_OBJECTS,
            *synthetic._GENERAL_TAILS,
        )
        for w in phrase.split()
    }
)
ZIPF = [1 / (rank + 1) for rank in range(len(WORDS))]
# not everyday words, so each means one thing only: trigger k copies the word k back
TRIGGERS = ("ditto", "redux", "anew", "encore", "bis", "iterum", "denuo", "rursus")
assert not set(TRIGGERS) & set(WORDS)


def word_salad(rng: random.Random, backcopy: float = 0.0, lags: int = 1) -> str:
    words = []
    for word in rng.choices(WORDS, ZIPF, k=rng.randint(20, 40)):
        words.append(word)
        if rng.random() < backcopy:
            lag = rng.randint(1, min(lags, len(words))) if lags > 1 else 1  # one lag draws nothing: earlier runs replay
            words += [TRIGGERS[lag - 1], words[-lag]]
    return "Heard in passing: " + " ".join(words) + "."


if __name__ == "__main__":
    usage = (
        f"usage: sink_word_salad.py SHARE [--backcopy P [--lags K]] [sink_emergence.py flags]: SHARE = copies of "
        f"the salad genre (e.g. 2), 0 <= P < 1, 1 <= K <= {len(TRIGGERS)}"
    )
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        raise SystemExit(usage)
    share, options = int(sys.argv.pop(1)), {"--backcopy": 0.0, "--lags": 1}
    while sys.argv[1:2] and sys.argv[1] in options:
        try:
            options[sys.argv[1]] = type(options[sys.argv[1]])(sys.argv[2])
        except (IndexError, ValueError):
            raise SystemExit(usage) from None
        del sys.argv[1:3]
    backcopy, lags = options["--backcopy"], options["--lags"]
    if not 0 <= backcopy < 1 or not 1 <= lags <= len(TRIGGERS):
        raise SystemExit(usage)
    if lags > 1 and not backcopy:
        raise SystemExit("--lags K needs --backcopy P > 0: the copy rules fire with probability P")

    def salad(rng: random.Random) -> str:
        return word_salad(rng, backcopy, lags)

    # recorded in the result JSON
    salad.__name__ = "word_salad" + (f"_backcopy{backcopy}" if backcopy else "") + (f"_lags{lags}" if lags > 1 else "")
    synthetic._GENRES = synthetic._GENRES + (salad,) * share  # read at call time by general_passages
    probe = Path(__file__).with_name("sink_emergence.py")
    sys.argv[0] = str(probe)
    runpy.run_path(str(probe), run_name="__main__")
