"""Multiple-choice benchmarks from local files, into :class:`MCItem`s.

Formats (what the Hugging Face datasets and the original releases ship):

- WMDP (``cais/wmdp``) and MMLU (``cais/mmlu``): rows ``{"question", "choices": [...], "answer": int}``
  as JSONL, JSON (a list) or parquet;
- MMLU's original CSV: ``question, A, B, C, D, answer-letter`` with no header;
- TruthfulQA MC1 (``truthful_qa``, config ``multiple_choice``): ``{"question", "mc1_targets":
  {"choices": [...], "labels": [1, 0, …]}}``.

Nothing is downloaded and nothing is unpickled.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sinkprobe.data.types import MCItem

# lm-eval's WMDP tasks name their subject in the description; MMLU rows carry their own.
_FILE_SUBJECTS = {"wmdp-bio": "biology", "wmdp-cyber": "computer security", "wmdp-chem": "chemistry"}


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a list of questions")
        return data
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            subject = path.stem.removesuffix("_test")  # MMLU's files are named by subject
            return [
                {"question": r[0], "choices": r[1:-1], "answer": "ABCDEFGHIJ".index(r[-1].strip()), "subject": subject}
                for r in csv.reader(f)
                if r
            ]
    raise ValueError(f"{path}: unknown file type {path.suffix!r}: give .jsonl, .json, .parquet or MMLU's .csv")


def _item(row: dict, path: Path, i: int) -> MCItem:
    try:
        if "mc1_targets" in row:  # TruthfulQA MC1: the one choice labelled 1 is correct
            targets = row["mc1_targets"]
            labels = list(targets["labels"])
            return MCItem(str(row["question"]), tuple(str(c) for c in targets["choices"]), labels.index(1))
        subject = str(row.get("subject") or _FILE_SUBJECTS.get(path.stem.split("-test")[0], "")).replace("_", " ")
        return MCItem(str(row["question"]), tuple(str(c) for c in row["choices"]), int(row["answer"]), subject)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path} row {i} is not a multiple-choice question ({e}): expected question/choices/answer "
            "(WMDP, MMLU) or question/mc1_targets (TruthfulQA)"
        ) from None


def load_multiple_choice(path: str | Path) -> list[MCItem]:
    """Every question in a local WMDP / MMLU / TruthfulQA-MC1 file (or a folder of such files)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet", ".csv"))
        if not files:
            raise FileNotFoundError(
                f"no .jsonl/.json/.parquet/.csv files in {path}: point to the benchmark's test split"
            )
        return [it for f in files for it in load_multiple_choice(f)]
    if not path.is_file():
        raise FileNotFoundError(f"no multiple-choice file at {path}: give a local WMDP/MMLU/TruthfulQA file or folder")
    items = [_item(row, path, i) for i, row in enumerate(_rows(path))]
    if not items:
        raise ValueError(f"{path} holds no questions")
    return items
