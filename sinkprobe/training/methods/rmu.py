"""RMU (paper Eq. A4-A6): steers the forget set's states at one layer to a random control
vector, training only a few MLPs; needs θ_o's retain logits and states at that layer."""

from __future__ import annotations

import torch

from sinkprobe.training.methods.base import Method, register
from sinkprobe.training.objectives import (
    default_rmu_layers,
    kl_retain_loss,
    rmu_control_vector,
    rmu_forget_loss,
    rmu_representation_retain_loss,
    select_rmu_parameters,
)


@register("rmu")
class RMU(Method):
    def __init__(self, cfg, model_config, device):
        super().__init__(cfg, model_config, device)
        layers, steer = default_rmu_layers(model_config.num_hidden_layers)
        self.layers = tuple(cfg.rmu_layers) or layers
        self.capture_layer = steer if cfg.rmu_steering_layer < 0 else cfg.rmu_steering_layer
        seed = torch.Generator().manual_seed(cfg.seed)
        self.control = rmu_control_vector(model_config.hidden_size, cfg.rmu_steering_coeff, seed).to(device)

    def trainable(self, model):
        return select_rmu_parameters(model, self.layers)

    def forget_loss(self, out, batch, refs):
        return rmu_forget_loss(out.hidden, self.control, batch.f_mask)

    def retain_loss(self, out, ref, batch):
        # Eq. A5 as the paper writes it: KL + MSE, both under the one γ of Eq. A6 (no second weight).
        kl = kl_retain_loss(out.logits, ref.logits, batch.r_mask)
        return kl + rmu_representation_retain_loss(out.hidden, ref.hidden, batch.r_mask)
