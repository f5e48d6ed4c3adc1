"""Unlearning methods as plug-ins, one short file each (as open-unlearning keeps them).

A method says what it needs from the frozen θ_o, its forget loss ℓ_f and its retain loss ℓ_r;
:func:`~sinkprobe.training.unlearn.unlearn` composes them with the value-norm term ℓ_vn:
``loss = ℓ_f + γ·ℓ_r + λ·ℓ_vn``. A new method is a file here that subclasses
:class:`~.base.Method` and registers it under the name recipes use (``unlearn.method``);
``docs/extending.md`` walks through one.
"""

from . import graddiff, npo, rmu  # noqa: F401  (importing registers them)
from .base import METHODS, Batch, Method, Outputs, method_for, register

__all__ = ["METHODS", "Batch", "Method", "Outputs", "method_for", "register"]
