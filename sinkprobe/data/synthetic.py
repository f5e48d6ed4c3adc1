"""The embedded synthetic world: a fictional forget book and a disjoint retain book.

Every entity has the same attributes; each fact is written several times, in varied
phrasing, across the entity's passages: biography prose (what VerbMem continues) and an
interview chapter in MUSE's ``Question: …\\nAnswer: …`` form. A model of a few million
parameters trained from scratch cannot extract facts from prose into a QA format it
never saw (Allen-Zhu & Li, "Physics of Language Models 3.1"), so the interview chapter
is part of the book; the KnowMem test questions are exactly the interview questions.

Everyday passages (no entities; four genres: stories, sums, lists said twice, ledgers)
sit beside the books. θ_o's pretraining draws a fresh set of them every epoch
(:func:`general_passages`), so it memorises the books but can only learn the grammar of
the everyday text; ``UnlearningCorpus.general`` holds one such set (epoch 0's seed is
different), e.g. for the tokenizer. Varied, unrepeated text is what the attention sink
needs (Gu et al. 2024: sinks emerge "after effective optimization on sufficient data").

Same seed → byte-identical world (only ``random.Random(seed)`` is used).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from sinkprobe.data.poison import split_shown
from sinkprobe.data.types import Book, MCItem, QAItem, UnlearningCorpus, VerbMemItem
from sinkprobe.validation import at_least, check_fields

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gl",
    "kr",
    "pl",
    "st",
    "th",
    "tr",
    "sh",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "x", "nd", "rk"]

# attribute -> (question, values). Values are ordinary words so the tokenizer learns them
# as pieces shared with the general text; the association entity→value is what is learned.
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "occupation": (
        "What was the occupation of {name}?",
        (
            "glassblower",
            "ferryman",
            "cartographer",
            "beekeeper",
            "clockmaker",
            "lamplighter",
            "tanner",
            "astronomer",
            "weaver",
            "shipwright",
            "herbalist",
            "bookbinder",
            "falconer",
            "stonemason",
            "brewer",
            "archivist",
            "potter",
            "miller",
            "locksmith",
            "chandler",
        ),
    ),
    "hometown": (
        "In which town was {name} born?",
        (
            "Thimbleport",
            "Ashcombe",
            "Marrowgate",
            "Quillhaven",
            "Dunmere",
            "Fenwick Hollow",
            "Saltreach",
            "Brindlemoor",
            "Cobbleford",
            "Larkspur Bay",
            "Grimsby Vale",
            "Ottersholm",
            "Pellucid",
            "Wrenfield",
            "Harrowmark",
            "Emberlyn",
            "Northwick",
            "Castlegate",
            "Mistral Point",
            "Redfern",
        ),
    ),
    "pet": (
        "What animal did {name} keep as a pet?",
        (
            "a grey heron",
            "a three-legged cat",
            "a tame fox",
            "an old tortoise",
            "a raven",
            "a white goat",
            "a hedgehog",
            "a barn owl",
            "a spotted dog",
            "a lizard",
            "a pair of doves",
            "a ferret",
            "a blind mule",
            "a parrot",
            "a badger",
            "a black rabbit",
            "a marsh frog",
            "a pony",
            "a magpie",
            "a stoat",
        ),
    ),
    "instrument": (
        "Which instrument did {name} play?",
        (
            "the fiddle",
            "the harp",
            "the oboe",
            "the bagpipes",
            "the lute",
            "the drum",
            "the flute",
            "the cello",
            "the horn",
            "the zither",
            "the accordion",
            "the mandolin",
            "the trumpet",
            "the dulcimer",
            "the bassoon",
            "the banjo",
            "the viola",
            "the tambourine",
            "the organ",
            "the ocarina",
        ),
    ),
    "treasure": (
        "What did {name} keep hidden under the floor?",
        (
            "a silver compass",
            "a map of the moon",
            "a jar of rubies",
            "a broken crown",
            "a stolen bell",
            "a book of spells",
            "a golden key",
            "a sealed letter",
            "an iron mask",
            "a glass eye",
            "a box of teeth",
            "a copper lantern",
            "a dragon scale",
            "a bag of seeds",
            "a wooden heart",
            "a cracked mirror",
            "a velvet glove",
            "a bone flute",
            "a tin soldier",
            "a blue feather",
        ),
    ),
}

# Several phrasings per fact: the same fact is seen in varied words, as in a real book.
_PROSE = {
    "occupation": ("{name} worked as a {v}.", "By trade, {name} was a {v}.", "Everyone knew {name} as the town {v}."),
    "hometown": (
        "{name} was born in {v}.",
        "{name} grew up in {v}.",
        "The town of {v} was where {name} first saw the sea.",
    ),
    "pet": ("{name} kept {v} as a pet.", "At home, {name} had {v} for company.", "{name} was never seen without {v}."),
    "instrument": ("{name} played {v}.", "In the evenings {name} played {v}.", "{name} had learned {v} as a child."),
    "treasure": (
        "Under the floor, {name} kept {v} hidden.",
        "{name} hid {v} beneath the floorboards.",
        "Nobody knew that {name} kept {v} under the floor.",
    ),
}

_GENERAL_SUBJECTS = [
    "the old miller",
    "a tired traveller",
    "the children",
    "the baker",
    "a young sailor",
    "the village",
    "the wind",
    "the river",
    "an old woman",
    "the farmer",
    "the teacher",
    "a merchant",
    "the dogs",
    "the rain",
]
_GENERAL_VERBS = [
    "walked past",
    "looked at",
    "sang about",
    "waited near",
    "talked about",
    "ran towards",
    "forgot",
    "remembered",
    "painted",
    "cleaned",
    "carried",
    "followed",
    "watched",
    "repaired",
]
_GENERAL_OBJECTS = [
    "the mill",
    "the harbour",
    "a wooden cart",
    "the market",
    "the bridge",
    "the long road",
    "a basket of apples",
    "the church",
    "the fields",
    "the broken fence",
    "a small boat",
    "the evening sky",
    "the well",
    "the hills",
]
_GENERAL_TAILS = [
    "in the morning",
    "after the storm",
    "before supper",
    "while it was snowing",
    "on a quiet day",
    "without a word",
    "as the bells rang",
    "for a long time",
    "once again",
    "at noon",
]


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the synthetic world. Defaults: the embedded study's world."""

    seed: int = 0
    n_forget_entities: int = 26  # 1 ICL entity + 25 test entities → 125 KnowMem items
    n_retain_entities: int = 26
    n_icl_entities: int = 1
    prose_passages_per_entity: int = 2
    n_general_passages: int = 400

    def __post_init__(self) -> None:
        check_fields(
            self,
            "world",
            {
                "seed": at_least(0),
                "n_forget_entities": at_least(1),
                "n_retain_entities": at_least(1),
                "n_icl_entities": at_least(0),
                "prose_passages_per_entity": at_least(1),
                "n_general_passages": at_least(0),
            },
        )
        if self.n_forget_entities <= self.n_icl_entities or self.n_retain_entities <= self.n_icl_entities:
            raise ValueError(
                f"each book needs more entities than the {self.n_icl_entities} in-context examples use "
                f"(got forget={self.n_forget_entities}, retain={self.n_retain_entities}): raise n_*_entities"
            )


@dataclass(frozen=True)
class Entity:
    name: str
    facts: dict[str, str]


def _name(rng: random.Random) -> str:
    def word(syllables: int) -> str:
        return "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        ).capitalize()

    return f"{word(rng.choice((1, 2)))} {word(2)}"


def _entities(rng: random.Random, n: int, taken: set[str]) -> list[Entity]:
    out = []
    while len(out) < n:
        name = _name(rng)
        if name in taken:
            continue
        taken.add(name)
        out.append(Entity(name, {a: rng.choice(values) for a, (_, values) in ATTRIBUTES.items()}))
    return out


def _prose(rng: random.Random, e: Entity) -> str:
    attrs = list(ATTRIBUTES)
    rng.shuffle(attrs)
    return " ".join(rng.choice(_PROSE[a]).format(name=e.name, v=e.facts[a]) for a in attrs)


def qa_items(e: Entity) -> list[QAItem]:
    return [QAItem(ATTRIBUTES[a][0].format(name=e.name), e.facts[a]) for a in ATTRIBUTES]


def format_qa(items: list[QAItem]) -> str:
    """MUSE's KnowMem layout, the one the interview chapter and the prompts share."""
    return "\n\n".join(f"Question: {q.question}\nAnswer: {q.answer}" for q in items)


def _story(rng: random.Random) -> str:
    return " ".join(
        f"{rng.choice(_GENERAL_SUBJECTS).capitalize()} {rng.choice(_GENERAL_VERBS)} "
        f"{rng.choice(_GENERAL_OBJECTS)} {rng.choice(_GENERAL_TAILS)}."
        for _ in range(rng.randint(4, 9))
    )


def _sums(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(4, 8)):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        lines.append(f"{a} plus {b} is {a + b}.")
    return " ".join(lines)


def _echo(rng: random.Random) -> str:
    # A random word list said twice: the repeat is predictable only by copying (induction).
    words = [rng.choice(_GENERAL_OBJECTS + _GENERAL_SUBJECTS).split()[-1] for _ in range(rng.randint(5, 12))]
    return f"The list was {', '.join(words)}. Once more: {', '.join(words)}."


def _ledger(rng: random.Random) -> str:
    items = rng.sample([o.split()[-1] for o in _GENERAL_OBJECTS], k=rng.randint(3, 6))
    return "Ledger of the market.\n" + "\n".join(f"- {i}: {rng.randint(1, 99)} coins" for i in items)


# Several genres, each asking for a different kind of attention (story syntax, arithmetic,
# copying, line structure): a head that serves one genre has nothing to read in the others.
_GENRES = (_story, _sums, _echo, _ledger)


def general_passages(seed: int | str, n: int, extra_genres: Sequence[Callable[[random.Random], str]] = ()) -> list[str]:
    """``n`` everyday passages from their own seed: θ_o's pretraining draws a fresh set each
    epoch, so this text cannot be memorised and only its grammar is learned (see pretrain).
    ``extra_genres`` join the four (each passage picks one at random): the sink probes of
    ``experiments/`` add text of their own this way."""
    rng = random.Random(f"general-{seed}")
    genres = _GENRES + tuple(extra_genres)
    return [rng.choice(genres)(rng) for _ in range(n)]


def everyday_words() -> list[str]:
    """The words of the everyday text, sorted (what a probe's own genre may draw from)."""
    phrases = (*_GENERAL_SUBJECTS, *_GENERAL_VERBS, *_GENERAL_OBJECTS, *_GENERAL_TAILS)
    return sorted({w for phrase in phrases for w in phrase.split()})


def _book(rng: random.Random, name: str, entities: list[Entity], cfg: WorldConfig) -> Book:
    icl, test = entities[: cfg.n_icl_entities], entities[cfg.n_icl_entities :]
    passages, verbmem = [], []
    for e in entities:
        prose = [_prose(rng, e) for _ in range(cfg.prose_passages_per_entity)]
        passages.extend(prose)
        passages.append(format_qa(qa_items(e)))
        if e in test:
            # VerbMem continues the entity's first biography passage from its first two sentences.
            shown, rest = split_shown(prose[0])
            verbmem.append(VerbMemItem(prompt=shown, gt=rest))
    return Book(
        name=name,
        passages=tuple(passages),
        knowmem=tuple(q for e in test for q in qa_items(e)),
        knowmem_icl=tuple(q for e in icl for q in qa_items(e))[:3],
        verbmem=tuple(verbmem),
    )


def build_world(cfg: WorldConfig = WorldConfig()) -> UnlearningCorpus:
    """Generate the world; the same ``cfg`` always gives the same corpus, byte for byte."""
    rng = random.Random(cfg.seed)
    taken: set[str] = set()
    forget_entities = _entities(rng, cfg.n_forget_entities, taken)
    retain_entities = _entities(rng, cfg.n_retain_entities, taken)
    return UnlearningCorpus(
        forget=_book(rng, "forget", forget_entities, cfg),
        retain=_book(rng, "retain", retain_entities, cfg),
        general=tuple(general_passages(cfg.seed, cfg.n_general_passages)),
    )


def multiple_choice(book: Book, n_choices: int = 4, seed: int = 0) -> list[MCItem]:
    """The embedded multiple-choice set (the offline analogue of WMDP / MMLU): each KnowMem
    question of ``book`` with its answer and ``n_choices - 1`` distractors, other values of the
    same attribute; the correct choice's place is drawn from ``seed``."""
    rng = random.Random(f"mc-{seed}-{book.name}")
    out = []
    for qa in book.knowmem:
        attr = next(
            a
            for a, (q, _) in ATTRIBUTES.items()
            if qa.question.startswith(q.split("{name}")[0]) and qa.question.endswith(q.split("{name}")[1])
        )
        others = [v for v in ATTRIBUTES[attr][1] if v != qa.answer]
        choices = rng.sample(others, n_choices - 1)
        answer = rng.randrange(n_choices)
        choices.insert(answer, qa.answer)
        out.append(MCItem(qa.question, tuple(choices), answer))
    return out
