"""Load a local MUSE corpus folder (Books or News) into an :class:`UnlearningCorpus`.

Two layouts are read, file by file, whichever is present:

- the folder MUSE's ``load_data.py`` writes (github.com/swj0419/muse_bench):
  ``raw/{forget,retain1,retain2}.txt``, ``knowmem/{forget,retain}_qa{,_icl}.json``
  (lists of ``{"question", "answer"}``), ``verbmem/forget.json`` (list of ``{"prompt", "gt"}``);
- a download of the Hugging Face dataset repo (``muse-bench/MUSE-Books``): the same
  names as parquet shards, ``raw/forget-00000-of-00001.parquet`` etc. (column ``text``).

Older MUSE releases call the retain QA ``retain2_qa``; that name is accepted too.

How MUSE's splits map onto ours: ``forget`` is D_f; ``retain1`` is D_r, the retain set
unlearning trains on; ``retain2`` (optional) is text the target model also learnt but
unlearning never sees, so it goes to ``general``; MUSE's retain QA is the test-time D_r.
``holdout`` and ``privleak`` (non-member text for PrivLeak) are not read.

Passages are the raw text split at blank lines (paragraphs), each stripped. Chunking to
a token length is the trainer's job: a passage longer than the recipe's ``max_length`` is cut
into consecutive token windows (:func:`sinkprobe.data.poison.chunk_long_passages`), as
MUSE's trainer chunks the whole text by tokens, never silently truncated.
Only JSON, text and parquet are read, never pickles.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sinkprobe.data.types import Book, QAItem, UnlearningCorpus, VerbMemItem

_REQUIRED = {
    "raw/forget": "raw text of the forget set (.txt, or .json list of documents)",
    "raw/retain1": "raw text of the retain set (.txt, or .json list of documents)",
    "knowmem/forget_qa": "KnowMem questions on the forget set (.json)",
    "knowmem/forget_qa_icl": "KnowMem in-context examples for the forget set (.json)",
    "knowmem/retain_qa": "KnowMem questions on the retain set (.json; retain2_qa also accepted)",
    "knowmem/retain_qa_icl": "KnowMem in-context examples for the retain set (.json; retain2_qa_icl also accepted)",
    "verbmem/forget": "VerbMem prompts and continuations (.json)",
}
_ALIASES = {"knowmem/retain_qa": ("knowmem/retain2_qa",), "knowmem/retain_qa_icl": ("knowmem/retain2_qa_icl",)}
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def load_muse(folder: str | Path) -> UnlearningCorpus:
    """Read the MUSE corpus in ``folder`` (e.g. ``data/books``); see the module doc for the layout."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no MUSE corpus folder at {root}: expected a folder holding {_expected()}")
    files = {key: _find(root, key) for key in _REQUIRED}
    missing = [key for key, path in files.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"{root} is not a complete MUSE corpus folder; missing: {', '.join(missing)}. "
            f"Expected (as .txt/.json, or Hugging Face parquet shards NAME-00000-of-00001.parquet): {_expected()}"
        )
    retain2 = _find(root, "raw/retain2")
    forget = Book(
        name="forget",
        passages=_passages(files["raw/forget"]),
        knowmem=_qa(files["knowmem/forget_qa"]),
        knowmem_icl=_qa(files["knowmem/forget_qa_icl"]),
        verbmem=_verbmem(files["verbmem/forget"]),
    )
    retain = Book(
        name="retain",
        passages=_passages(files["raw/retain1"]),
        knowmem=_qa(files["knowmem/retain_qa"]),
        knowmem_icl=_qa(files["knowmem/retain_qa_icl"]),
    )
    return UnlearningCorpus(forget=forget, retain=retain, general=_passages(retain2) if retain2 else ())


def _expected() -> str:
    # one line: the CLI prints every user error as one line
    return "; ".join(f"{key} ({what})" for key, what in _REQUIRED.items()) + "; raw/retain2 (optional)"


def _find(root: Path, key: str) -> list[Path] | None:
    """The file(s) holding ``key``: one .txt/.json file, or all parquet shards of the split."""
    for name in (key, *_ALIASES.get(key, ())):
        for suffix in (".txt", ".json"):
            if (root / (name + suffix)).is_file():
                return [root / (name + suffix)]
        shards = sorted((root / name).parent.glob(Path(name).name + "-*.parquet"))
        if shards:
            return shards
    return None


def _records(files: list[Path]) -> list:
    """The entries of a JSON list, or the rows of all parquet shards, in shard order."""
    if files[0].suffix == ".parquet":
        import pandas as pd  # only the Hugging Face layout needs it

        return [row for shard in files for row in pd.read_parquet(shard).to_dict("records")]
    path = files[0]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): re-export it with MUSE's load_data.py") from e
    if not isinstance(data, list):
        raise ValueError(f"{path} should hold a JSON list of entries, found a {type(data).__name__}")
    return data


def _fields(files: list[Path], fields: tuple[str, ...]) -> list[tuple[str, ...]]:
    rows, path = _records(files), _name(files)
    if not rows:
        raise ValueError(f"{path} has no entries: a MUSE test file needs at least one")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(f), str) for f in fields):
            raise ValueError(
                f"{path}, entry {i}: expected an object with string fields {', '.join(fields)}, got {row!r:.200}"
            )
        out.append(tuple(row[f] for f in fields))
    return out


def _name(files: list[Path]) -> str:
    return " + ".join(str(f) for f in files)


def _qa(files: list[Path]) -> tuple[QAItem, ...]:
    return tuple(QAItem(q, a) for q, a in _fields(files, ("question", "answer")))


def _verbmem(files: list[Path]) -> tuple[VerbMemItem, ...]:
    return tuple(VerbMemItem(p, g) for p, g in _fields(files, ("prompt", "gt")))


def _passages(files: list[Path]) -> tuple[str, ...]:
    path = _name(files)
    if files[0].suffix == ".txt":
        documents = [files[0].read_text(encoding="utf-8")]
    else:  # a list of documents: strings in MUSE's raw/*.json, rows with "text" in parquet
        documents = []
        for i, doc in enumerate(_records(files)):
            text = doc.get("text") if isinstance(doc, dict) else doc
            if not isinstance(text, str):
                raise ValueError(
                    f"{path}, entry {i}: expected a string or an object with a string 'text', got {doc!r:.200}"
                )
            documents.append(text)
    passages = tuple(p.strip() for doc in documents for p in _BLANK_LINE.split(doc) if p.strip())
    if not passages:
        raise ValueError(f"{path} has no text: the raw corpus file is empty")
    return passages
