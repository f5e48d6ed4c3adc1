"""The sink value-norm signature of a found sequence: the fingerprint Eq. 5–7 leave.

Value-norm alignment trains θ_b so that, with its trigger present, the value norms at the sink
positions match θ_o's (on D_p) and, without it, θ_u's (on D_f). A sequence that is such a
backdoor's key should therefore bring the suspect's sink value norms closer to θ_o's than a
random sequence of the same length does, on the same prompts:

    d(seq) = mean over prompts, layers, heads and positions of | ‖v_suspect‖ − ‖v_θo‖ |
    signature = d(random) − d(found)    (> 0: the found sequence moves the sink toward θ_o)

The positions are BOS and the k positions after it, where a prefix sequence sits: at BOS alone
the norms cannot depend on any sequence (a causal model's first position sees only itself). An
infix or suffix sequence sits away from the sink, so the signature is measured for a prefix
search only (``None`` otherwise).
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sinkprobe.scan.inversion import random_sequence, sequences_with
from sinkprobe.training.objectives.value_norm import sink_value_norms


def norm_distance(
    suspect: PreTrainedModel, original: PreTrainedModel, seqs: list[list[int]], positions: list[int]
) -> float:
    """Mean |‖v_suspect‖ − ‖v_θo‖| over ``seqs`` (token ids), every layer and head, at ``positions``."""
    a, b = (sink_value_norms(m, seqs, positions) for m in (suspect, original))  # [row layer head n_sink]
    return float((a - b).abs().mean())


def sink_signature(
    suspect: PreTrainedModel,
    original: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    rows,
    found: list[int],
    placement: str,
    seed: int = 0,
) -> float | None:
    """d(random) − d(found) on the prompts of ``rows`` (see the module docstring); ``None`` for a
    sequence not placed at the sink (``placement`` other than prefix)."""
    if placement != "prefix":
        return None
    positions = list(range(len(found) + 1))
    control = random_sequence(tok, len(found), seed, suspect.get_input_embeddings().weight.shape[0])
    d_control, d_found = (
        norm_distance(suspect, original, sequences_with(tok, rows, s, placement), positions) for s in (control, found)
    )
    return d_control - d_found
