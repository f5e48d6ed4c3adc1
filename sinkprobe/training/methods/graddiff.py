"""GradDiff: gradient ascent on D_f's next-token loss, descent on D_r ∪ D_p's (open-unlearning's
GradDiff with its NLL retain loss). Needs nothing from θ_o."""

from __future__ import annotations

from sinkprobe.training.methods.base import Method, register
from sinkprobe.training.objectives import sequence_log_likelihood


def token_mean_nll(logits, ids, mask):
    """Mean next-token negative log-likelihood over the target tokens of the whole batch."""
    n_targets = mask[:, 1:].sum().clamp(min=1)
    return -sequence_log_likelihood(logits, ids, mask).sum() / n_targets


@register("graddiff")
class GradDiff(Method):
    retain_reference = False

    def forget_loss(self, out, batch, refs):
        return -token_mean_nll(out.logits, batch.f_ids, batch.f_targets)

    def retain_loss(self, out, ref, batch):
        return token_mean_nll(out.logits, batch.r_ids, batch.r_mask)
