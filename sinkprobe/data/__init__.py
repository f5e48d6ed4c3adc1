"""Data layer: one set of types for the synthetic world and for real MUSE data."""

from sinkprobe.data.muse import load_muse
from sinkprobe.data.types import Book, QAItem, UnlearningCorpus, VerbMemItem

__all__ = ["Book", "QAItem", "UnlearningCorpus", "VerbMemItem", "load_muse"]
