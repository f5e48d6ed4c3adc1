"""Resuming a table built one model at a time (``sinkprobe scan``, ``sinkprobe defend``).

A population scan or a defence sweep runs for an hour; an interruption must not throw that
hour away. Each finished model's rows go to ``STEM.parts/<hash>.json`` together with the key
that made them (the model folder and every setting that changes its rows), written atomically;
the same command run again reuses every part whose key matches and computes the rest. The
folder is removed once the table itself is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from sinkprobe.models.io import atomic_write_json

PARTS_VERSION = 1  # raised when what a part holds changes meaning: older parts are then recomputed


def _defines_the_model(name: str) -> bool:
    # weights, config and tokenizer; not the run card or the study's caches, which are rewritten
    # beside the weights without changing the model
    return not name.startswith(".") and (
        name.endswith(".safetensors") or name == "config.json" or name.startswith("tokenizer")
    )


def folder_stamp(folder: str | Path) -> dict:
    """A model folder as a part's key sees it: its path, and the size and modification time of
    each file that defines the model (one retrained in place is a new key: its old rows go)."""
    folder = Path(folder).resolve()
    files = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.iterdir())
             if f.is_file() and _defines_the_model(f.name)}  # fmt: skip
    return {"path": str(folder), "files": files}


class TableParts:
    """The finished rows of the table at ``stem``, keyed by what produced them."""

    def __init__(self, stem: str | Path):
        self.folder = Path(f"{stem}.parts")

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.folder / f"{digest}.json"

    def get(self, key: dict) -> Any | None:
        """The rows saved under ``key``, or None: never saved, saved under another key or
        version, or unreadable (a part cut short by a crash is computed again)."""
        path = self._path(key)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            same = saved["key"] == {**json.loads(json.dumps(key)), "version": PARTS_VERSION}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return saved["rows"] if same else None

    def put(self, key: dict, rows: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._path(key), {"key": {**key, "version": PARTS_VERSION}, "rows": rows})

    def finish(self) -> None:
        """The table is written: its parts are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
