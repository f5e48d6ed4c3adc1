"""Saving analysis results so figures regenerate without recomputing.

A result dataclass ``name`` in ``folder`` becomes ``name.safetensors`` (its tensor fields),
``name.<field>.parquet`` (its DataFrame fields) and ``name.json`` (type, the other fields and a
free-form run description). Every file is written beside its target and swapped in with
``os.replace``; the JSON goes last, so a readable JSON means a complete result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, TypeVar

import pandas as pd
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from sinkprobe.models.hooked import bridge_path
from sinkprobe.models.io import atomic_save_tensors, atomic_write_json, load_tensors

T = TypeVar("T")


def describe_run(models: Mapping[str, TransformerBridge], **extra) -> dict:
    """Run description for the JSON: model folders, dtype, and whatever the caller adds
    (n samples, trigger, data set…)."""
    first = next(iter(models.values()))
    return {
        "models": {name: bridge_path(b) for name, b in models.items()},
        "dtype": str(first.cfg.dtype),
        **extra,
    }


def save_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Atomic parquet write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_result(result, folder: str | Path, name: str, run: dict | None = None) -> Path:
    """Write ``result`` (an analysis dataclass) as ``folder/name.*``; returns the JSON path."""
    folder = Path(folder)
    tensors: dict[str, Tensor] = {}
    tables: list[str] = []
    fields: dict = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, Tensor):
            tensors[f.name] = value
        elif isinstance(value, pd.DataFrame):
            save_table(value, folder / f"{name}.{f.name}.parquet")
            tables.append(f.name)
        else:
            fields[f.name] = value
    if tensors:
        atomic_save_tensors(folder / f"{name}.safetensors", tensors)
    meta = {
        "type": type(result).__name__,
        "fields": fields,
        "tensors": sorted(tensors),
        "tables": tables,
        "run": run or {},
    }
    path = folder / f"{name}.json"
    atomic_write_json(path, meta)
    return path


def load_result(folder: str | Path, name: str, cls: type[T]) -> T:
    """Read back what :func:`save_result` wrote, as ``cls``."""
    folder = Path(folder)
    path = folder / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no saved result {path}: run the analysis that writes {name!r} first")
    meta = json.loads(path.read_text())
    if meta["type"] != cls.__name__:
        raise ValueError(f"{path} holds a {meta['type']}, not a {cls.__name__}: load it with that class")
    values = dict(meta["fields"])
    if meta["tensors"]:
        values |= load_tensors(folder / f"{name}.safetensors")
    for t in meta["tables"]:
        values[t] = pd.read_parquet(folder / f"{name}.{t}.parquet")
    return cls(**values)


def load_run(folder: str | Path, name: str) -> dict:
    """The run description saved with result ``name``."""
    return json.loads((Path(folder) / f"{name}.json").read_text())["run"]
