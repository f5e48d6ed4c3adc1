"""WMDP's unlearning corpora from local files, into the same :class:`UnlearningCorpus`.

WMDP (Li et al. 2024) ships its forget corpora as JSONL (``bio-forget-corpus.jsonl``,
``cyber-forget-corpus.jsonl``: one document per line, field ``text``) and uses a
wikitext-style retain corpus (``*retain*.jsonl`` with ``text``, or plain ``.txt`` / parquet
``text`` column). Evaluation is multiple choice (WMDP-bio/cyber questions, MMLU), so the
books carry passages only; see :mod:`sinkprobe.data.multiple_choice`.
"""

from __future__ import annotations

import json
from pathlib import Path

from sinkprobe.data.types import Book, UnlearningCorpus


def _texts(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                row = json.loads(line)
                if "text" not in row:
                    raise ValueError(f"{path} line {i + 1} has no 'text' field: WMDP corpora are JSONL rows with text")
                out.append(str(row["text"]))
        return out
    if path.suffix == ".parquet":
        import pandas as pd

        return [str(t) for t in pd.read_parquet(path, columns=["text"])["text"]]
    return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]


def load_wmdp(folder: str | Path, subset: str = "") -> UnlearningCorpus:
    """Forget corpora (``*forget*``) and retain corpora (``*retain*`` or ``wikitext*``) of ``folder``;
    ``subset`` ("bio" / "cyber") keeps only that forget corpus."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no WMDP data folder at {folder}: expected bio-forget-corpus.jsonl / cyber-forget-corpus.jsonl "
            "and a retain corpus (*retain*.jsonl or wikitext*.txt/.parquet)"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".txt", ".parquet"))
    forget = [p for p in files if "forget" in p.name and subset in p.name]
    retain = [p for p in files if "retain" in p.name or p.name.startswith("wikitext")]
    if not forget or not retain:
        raise FileNotFoundError(
            f"{folder} lacks {'a forget corpus' if not forget else 'a retain corpus'}: expected "
            "*forget*.jsonl and *retain*.jsonl (or wikitext*) files"
        )
    passages = lambda fs: tuple(t for f in fs for t in _texts(f) if t.strip())  # noqa: E731
    return UnlearningCorpus(forget=Book("wmdp-forget", passages(forget)), retain=Book("wmdp-retain", passages(retain)))
