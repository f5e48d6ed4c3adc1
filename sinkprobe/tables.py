"""A table people copy, written as ``STEM.csv`` and ``STEM.md`` from one data frame."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from sinkprobe.models.io import atomic_write_text


def markdown_table(frame: pd.DataFrame, headers: dict[str, str] | None = None, float_format: str = "{:.2f}") -> str:
    """``frame`` as a Markdown table: floats through ``float_format``, blanks for None / NaN,
    ``|`` and newlines escaped; ``headers`` renames columns."""

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return float_format.format(v)
        return str(v).replace("|", "\\|").replace("\n", "\\n")

    head = [(headers or {}).get(c, c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def table_paths(stem: str | Path) -> tuple[Path, Path]:
    """The ``.csv`` and ``.md`` files of a table ``stem``. A dot inside the stem stays
    (``eval_wd0.5`` → ``eval_wd0.5.csv``); a ``.csv`` / ``.md`` ending is taken off first."""
    stem = Path(stem)
    if stem.suffix in (".csv", ".md"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")


def write_csv_md(
    frame: pd.DataFrame,
    stem: str | Path,
    title: str = "",
    headers: dict[str, str] | None = None,
    footer: str = "",
    *,
    float_format: str = "{:.2f}",
    shown: pd.DataFrame | None = None,
) -> tuple[Path, Path]:
    """``stem.csv`` (every column of ``frame``, full precision) and ``stem.md`` (``### title``, the
    table of ``shown`` — default ``frame`` — then ``footer``), each written atomically."""
    csv, md = table_paths(stem)
    atomic_write_text(csv, frame.to_csv(index=False))
    table = markdown_table(frame if shown is None else shown, headers, float_format)
    atomic_write_text(md, (f"### {title}\n\n" if title else "") + table + footer)
    return csv, md
