"""Unlearning objectives as small, pure loss functions (one method per file, as open-unlearning).

- :mod:`.common`      next-token shift convention, ``sequence_log_likelihood``
- :mod:`.npo`         NPO forget loss (Eq. A1)
- :mod:`.kl`          KL(π_θ ‖ π_θo) retain loss (Eq. A2, A5)
- :mod:`.rmu`         RMU forget / representation-retain losses, parameter selection (Eq. A4, A5)
- :mod:`.value_norm`  sink-token value-norm alignment ℓ_vn (Eq. 5–7)

The training loop composes them; nothing here runs a model except the hook helpers.
"""

from .common import sequence_log_likelihood, token_mask_shifted
from .kl import kl_retain_loss
from .npo import npo_loss
from .rmu import (
    LayerOutputCapture,
    default_rmu_layers,
    rmu_control_vector,
    rmu_forget_loss,
    rmu_representation_retain_loss,
    select_rmu_parameters,
)
from .value_norm import (
    ValueNormCapture,
    gather_sink_norms,
    per_head_value_norms,
    sink_value_norms,
    value_norm_alignment_loss,
    value_norm_regulariser,
)

__all__ = [
    "sequence_log_likelihood",
    "token_mask_shifted",
    "npo_loss",
    "kl_retain_loss",
    "rmu_control_vector",
    "rmu_forget_loss",
    "rmu_representation_retain_loss",
    "select_rmu_parameters",
    "default_rmu_layers",
    "LayerOutputCapture",
    "per_head_value_norms",
    "sink_value_norms",
    "gather_sink_norms",
    "ValueNormCapture",
    "value_norm_alignment_loss",
    "value_norm_regulariser",
]
