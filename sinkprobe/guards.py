"""What sinkprobe checks before it reads a folder or writes an output, so that a bad input is
refused in one line (a ``ValueError`` / ``FileNotFoundError`` the CLI prints) before any work.

No imports from the rest of the package: the loaders and writers all use these.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# The files through which transformers finds a folder's own Python (``auto_map``).
CODE_POINTERS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def read_json(path: str | Path, fix: str) -> Any:
    """Parse a JSON file the user may have edited or truncated; ``fix`` says what to do if it is broken."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): {fix}") from None


def refuse_custom_code(folder: str | Path) -> None:
    """Refuse a model folder that asks transformers to import its own Python (``auto_map``):
    sinkprobe never runs code from a folder, and never asks whether to."""
    folder = Path(folder)
    for name in CODE_POINTERS:
        path = folder / name
        if path.is_file() and "auto_map" in _top_level(path):
            raise ValueError(
                f"{path} has an auto_map (the folder ships its own Python code): sinkprobe never runs code from a "
                "model folder; use a checkpoint of a built-in transformers architecture, or remove auto_map if the "
                "architecture is built in"
            )


def _top_level(path: Path) -> dict:
    raw = read_json(path, "fix or replace the file (it is part of a model folder)")
    return raw if isinstance(raw, dict) else {}


def require_writable(folder: str | Path, what: str) -> None:
    """Fail now, not after the work, when ``folder`` could not be created or written to.
    Creates nothing: the nearest existing folder on the path is the one that must be writable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} is a file, not a folder: choose another path")
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {folder}: {existing} is a file, not a folder: choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"cannot write to {what} {folder} ({existing} is read-only for you): choose a folder you can write to"
        )
