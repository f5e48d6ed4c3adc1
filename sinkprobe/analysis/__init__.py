"""Analysis core: attention-difference maps, per-position logits, attention sinks, value norms.

Pure functions over tensors (shapes in their docstrings, TransformerLens order: batch, pos /
head, query, key) and thin runners that take a bridge and token-id lists. Never imports
:mod:`sinkprobe.training`.
"""

from sinkprobe.analysis.attention import attention_patterns
from sinkprobe.analysis.correlation import (
    NormCorrelation,
    bootstrap_pearson,
    norm_correlation,
    paper_comparisons,
    shared_prefix,
    varying_positions,
)
from sinkprobe.analysis.key_classes import KEY_CLASSES, attention_by_key_class, key_class_shares
from sinkprobe.analysis.logits import position_stats, true_token_scores
from sinkprobe.analysis.pairs import PairAnalysis, PoisonedPairs, analyse_pairs
from sinkprobe.analysis.results import describe_run, load_result, load_run, save_result, save_table
from sinkprobe.analysis.sinks import SinkReport, detect_sinks, sink_rate_at, sink_scores, sink_set
from sinkprobe.analysis.value_norms import collect_value_norms, value_norms

__all__ = [
    "attention_patterns",
    "KEY_CLASSES",
    "attention_by_key_class",
    "key_class_shares",
    "NormCorrelation",
    "bootstrap_pearson",
    "norm_correlation",
    "paper_comparisons",
    "shared_prefix",
    "varying_positions",
    "position_stats",
    "true_token_scores",
    "PairAnalysis",
    "PoisonedPairs",
    "analyse_pairs",
    "describe_run",
    "load_result",
    "load_run",
    "save_result",
    "save_table",
    "SinkReport",
    "detect_sinks",
    "sink_rate_at",
    "sink_scores",
    "sink_set",
    "collect_value_norms",
    "value_norms",
]
