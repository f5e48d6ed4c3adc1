"""Data sources a recipe names (``[data] source = …``): each a loader from a path to an
:class:`~sinkprobe.data.types.UnlearningCorpus`. A new source is one function registered here."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sinkprobe.data.muse import load_muse
from sinkprobe.data.types import UnlearningCorpus, read_corpus
from sinkprobe.data.wmdp import load_wmdp
from sinkprobe.layout import StudyLayout


def load_embedded(path: Path) -> UnlearningCorpus:
    """A study folder's synthetic world (``world/corpus.json``)."""
    f = StudyLayout(path).corpus
    if not f.is_file():
        raise FileNotFoundError(
            f"no embedded world at {f}: run `sinkprobe world --out {path}` (or `sinkprobe study`) first"
        )
    return read_corpus(f)


CORPUS_LOADERS: dict[str, Callable[[Path], UnlearningCorpus]] = {
    "embedded": load_embedded,
    "muse": load_muse,
    "wmdp": load_wmdp,
}


def load_corpus(source: str, path: str | Path) -> UnlearningCorpus:
    """The unlearning corpus a recipe names: an embedded study folder, a MUSE or a WMDP data folder."""
    if source not in CORPUS_LOADERS:
        raise ValueError(f"unknown data source {source!r}: use one of {', '.join(map(repr, CORPUS_LOADERS))}")
    return CORPUS_LOADERS[source](Path(path))
