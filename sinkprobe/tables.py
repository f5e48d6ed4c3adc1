"""A table people copy, written as ``STEM.csv`` and ``STEM.md`` from one data frame."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from sinkprobe.models.io import atomic_write_text


def markdown_table(frame: pd.DataFrame, headers: dict[str, str] | None = None, digits: int = 2) -> str:
    """``frame`` as a Markdown table: floats to ``digits`` places, blanks for None / NaN, ``|``
    and newlines escaped; ``headers`` renames columns."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v).replace("|", "\\|").replace("\n", "\\n")

    head = [(headers or {}).get(c, c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_csv_md(
    frame: pd.DataFrame, stem: Path, title: str = "", headers: dict[str, str] | None = None, footer: str = ""
) -> tuple[Path, Path]:
    """``stem.csv`` (every column, full precision) and ``stem.md`` (``### title``, the table,
    then ``footer``), each written atomically."""
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic_write_text(csv, frame.to_csv(index=False))
    atomic_write_text(md, (f"### {title}\n\n" if title else "") + markdown_table(frame, headers) + footer)
    return csv, md
