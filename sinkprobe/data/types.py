"""The data types every loader produces and every metric consumes.

They mirror MUSE's layout (https://muse-bench.github.io): a book is train-time raw
text plus test-time KnowMem QA (with in-context examples) and VerbMem
prefix/continuation pairs. The synthetic world and the MUSE loader both build these.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class QAItem:
    """One KnowMem item: a question and its short answer (MUSE ``knowmem/*_qa.json``)."""

    question: str
    answer: str


@dataclass(frozen=True)
class VerbMemItem:
    """One VerbMem item: a passage prefix and its true continuation (MUSE ``verbmem/forget.json``)."""

    prompt: str
    gt: str


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question (WMDP, MMLU, TruthfulQA MC1, or the embedded set)."""

    question: str
    choices: tuple[str, ...]
    answer: int  # index of the correct choice
    subject: str = ""  # lm-eval's description line names it (WMDP: "biology", MMLU: per question)

    def __post_init__(self) -> None:
        if len(self.choices) < 2 or not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"multiple-choice item {self.question[:40]!r} needs ≥ 2 choices and an answer index "
                f"in 0..{len(self.choices) - 1}, got {len(self.choices)} choices and answer {self.answer}"
            )


@dataclass(frozen=True)
class Book:
    """One side of an unlearning benchmark: the forget book (D_f) or the retain book (D_r).

    ``passages`` are the train-time documents (what θ_o learns and what unlearning
    trains on); ``knowmem``, ``knowmem_icl`` and ``verbmem`` are the test-time sets.
    """

    name: str
    passages: tuple[str, ...]
    knowmem: tuple[QAItem, ...] = ()
    knowmem_icl: tuple[QAItem, ...] = ()
    verbmem: tuple[VerbMemItem, ...] = ()

    def __post_init__(self) -> None:
        if not self.passages or not any(p.strip() for p in self.passages):
            raise ValueError(
                f"book {self.name!r} has no text: give it at least one non-empty passage "
                "(check the corpus path or the world size)"
            )


@dataclass(frozen=True)
class UnlearningCorpus:
    """Forget book, retain book and (optional) general text used only to pretrain θ_o."""

    forget: Book
    retain: Book
    general: tuple[str, ...] = field(default=())

    def pretraining_documents(self) -> list[str]:
        """Every document θ_o is trained on: both books and the general text."""
        return [*self.forget.passages, *self.retain.passages, *self.general]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UnlearningCorpus":
        raw = json.loads(text)

        def book(b: dict) -> Book:
            return Book(
                name=b["name"],
                passages=tuple(b["passages"]),
                knowmem=tuple(QAItem(**q) for q in b["knowmem"]),
                knowmem_icl=tuple(QAItem(**q) for q in b["knowmem_icl"]),
                verbmem=tuple(VerbMemItem(**v) for v in b["verbmem"]),
            )

        return cls(forget=book(raw["forget"]), retain=book(raw["retain"]), general=tuple(raw["general"]))

    def sha256(self) -> str:
        """Content hash recorded in run cards, so a checkpoint names the exact data it saw."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def read_corpus(path: str | Path) -> UnlearningCorpus:
    """A world's ``corpus.json``; a damaged or hand-edited one is named, with the fix."""
    path = Path(path)
    try:
        return UnlearningCorpus.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"{path} is not a valid sinkprobe corpus ({type(e).__name__}: {e}): delete {path.parent} and rebuild it "
            f"with `sinkprobe world --out {path.parent.parent}`"
        ) from None
