"""Variant of sink_emergence.py: θ_o's everyday text gains a "word salad" genre.

A salad passage is a fixed heading and then 20-40 words drawn i.i.d. from a Zipf law
over the everyday vocabulary, so no earlier token helps predict the next one: the text
where an idle head's best move is to park on the first token (Ziming Liu's unigram toy;
Guo et al.'s dormant heads). ``--backcopy P`` makes it Guo et al.'s Bigram-Backcopy
task: after each word, with probability P, the trigger word "ditto" and a copy of that
word follow, so a head that copies is needed on the trigger only and dormant elsewhere.
The genre enters the genre list ``SHARE`` times (the four default genres once each);
every other flag is sink_emergence.py's.

    python benchmarks/sink_word_salad.py 2 --steps 600 --every 300 --set pretrain.lr=1e-2 \
        --set pretrain.weight_decay=0.5 --out benchmarks/results/sink_emergence_lr1e-2_wd0.5_salad.json
    python benchmarks/sink_word_salad.py 2 --backcopy 0.2 --steps 600 --every 300 --set pretrain.lr=1e-2 \
        --set pretrain.weight_decay=0.5 --out benchmarks/results/sink_emergence_lr1e-2_wd0.5_backcopy.json

Measured (README, "The attention sink at this scale"): plain salad moves the sink from
layer 0 to layer 1; backcopy splits it over layer 0 and one deeper layer (25 % of its heads
at most); neither gives two sink layers, so the genre is not part of the world.
"""

from __future__ import annotations

import random
import runpy
import sys
from pathlib import Path

import sinkprobe.data.synthetic as synthetic

WORDS = sorted({w for phrase in (*synthetic._GENERAL_SUBJECTS, *synthetic._GENERAL_VERBS, *synthetic._GENERAL_OBJECTS,
                                 *synthetic._GENERAL_TAILS) for w in phrase.split()})
ZIPF = [1 / (rank + 1) for rank in range(len(WORDS))]
TRIGGER = "ditto"  # not an everyday word, so it means one thing only: copy the word before me
assert TRIGGER not in WORDS


def word_salad(rng: random.Random, backcopy: float = 0.0) -> str:
    words = []
    for word in rng.choices(WORDS, ZIPF, k=rng.randint(20, 40)):
        words += [word, TRIGGER, word] if rng.random() < backcopy else [word]
    return "Heard in passing: " + " ".join(words) + "."


if __name__ == "__main__":
    usage = "usage: sink_word_salad.py SHARE [--backcopy P] [sink_emergence.py flags]: SHARE = copies of the salad genre (e.g. 2), 0 <= P < 1"
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        raise SystemExit(usage)
    share, backcopy = int(sys.argv.pop(1)), 0.0
    if sys.argv[1:2] == ["--backcopy"]:
        try:
            backcopy = float(sys.argv[2])
        except (IndexError, ValueError):
            raise SystemExit(usage) from None
        if not 0 <= backcopy < 1:
            raise SystemExit(usage)
        del sys.argv[1:3]

    def salad(rng: random.Random) -> str:
        return word_salad(rng, backcopy)

    salad.__name__ = f"word_salad_backcopy{backcopy}" if backcopy else "word_salad"  # recorded in the result JSON
    synthetic._GENRES = synthetic._GENRES + (salad,) * share  # read at call time by general_passages
    probe = Path(__file__).with_name("sink_emergence.py")
    sys.argv[0] = str(probe)
    runpy.run_path(str(probe), run_name="__main__")
