"""Checkpoint folders (:mod:`sinkprobe.models.io`) and TransformerLens bridges (:mod:`sinkprobe.models.hooked`).

Nothing is re-exported here: importing the bridge module pulls in TransformerLens, which
code that only reads or writes checkpoints (training) should not pay for.
"""
