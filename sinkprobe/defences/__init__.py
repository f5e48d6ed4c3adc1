"""Defences at inference against a trigger that reaches the attention sink.

Two act on the prompt (:mod:`~sinkprobe.defences.prompts`: sink re-anchoring, prefix
perturbation), one on the model (:mod:`~sinkprobe.defences.value_clamp`: sink value clamping);
:mod:`~sinkprobe.defences.measure` scores a backdoored model under each.
"""

from sinkprobe.defences.prompts import perturb_prefix, reanchor
from sinkprobe.defences.value_clamp import SinkValueClamp, clamp_norms, sink_value_range

__all__ = ["SinkValueClamp", "clamp_norms", "perturb_prefix", "reanchor", "sink_value_range"]
