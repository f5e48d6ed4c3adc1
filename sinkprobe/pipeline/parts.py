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


def folder_stamp(folder: str | Path) -> dict:
    """A model folder as a part's key sees it: its path, and each file's size and modification
    time (a model retrained in place is a new key, so its old rows are not reused)."""
    folder = Path(folder).resolve()
    files = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.iterdir()) if f.is_file()}
    return {"path": str(folder), "files": files}


class TableParts:
    """The finished rows of the table at ``stem``, keyed by what produced them."""

    def __init__(self, stem: str | Path):
        self.folder = Path(f"{stem}.parts")

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.folder / f"{digest}.json"

    def get(self, key: dict) -> Any | None:
        """The rows saved under ``key``, or None (never saved, or saved under another key)."""
        path = self._path(key)
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        return saved["rows"] if saved.get("key") == json.loads(json.dumps(key)) else None

    def put(self, key: dict, rows: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._path(key), {"key": key, "rows": rows})

    def __len__(self) -> int:
        return len(list(self.folder.glob("*.json"))) if self.folder.is_dir() else 0

    def finish(self) -> None:
        """The table is written: its parts are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
