"""What a method is: its needs from θ_o, its forget loss and its retain loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

METHODS: dict[str, type["Method"]] = {}


def register(name: str):
    """Class decorator: make a :class:`Method` available to recipes as ``unlearn.method = name``."""

    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


@dataclass
class Batch:
    """One step's data: the forget batch (``f_``, rows of D_f) and the retain batch (``r_``, rows
    of D_r ∪ D_p): the drawn row indices and ``[batch pos]`` ids and masks; ``f_targets`` marks
    the scored forget tokens."""

    f_rows: list[int]
    f_ids: Tensor
    f_mask: Tensor
    f_targets: Tensor
    r_rows: list[int]
    r_ids: Tensor
    r_mask: Tensor


@dataclass
class Outputs:
    """A forward's ``[batch pos vocab]`` logits and, for a method with a ``capture_layer``, that
    layer's ``[batch pos d_model]`` output (None otherwise)."""

    logits: Tensor
    hidden: Tensor | None = None


class Method:
    """Subclass, set the class attributes, and override the two losses (and ``trainable``)."""

    name = ""
    # frozen θ_o's contributions, computed once before the first step:
    reference_log_likelihood = False  # log π_θo(y|x) on D_f (NPO's reference), as refs["ll_f"]
    retain_reference = True  # θ_o's outputs on D_r ∪ D_p, passed to retain_loss as ``ref``
    capture_layer: int | None = None  # a decoder layer whose output the losses read (RMU)

    def __init__(self, cfg, model_config, device: torch.device) -> None:
        self.cfg = cfg

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the optimiser updates (default: all of them)."""
        return [p for p in model.parameters() if p.requires_grad]

    def forget_loss(self, out: Outputs, batch: Batch, refs: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def retain_loss(self, out: Outputs, ref: Outputs | None, batch: Batch) -> Tensor:
        raise NotImplementedError


def method_for(cfg, model_config, device: torch.device) -> Method:
    """The registered method ``cfg.method``, built for this model."""
    return METHODS[cfg.method](cfg, model_config, device)
