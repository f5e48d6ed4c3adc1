"""NPO (paper Eq. 2 with A1, A2): needs θ_o's log-likelihoods of D_f and its retain logits."""

from __future__ import annotations

from sinkprobe.training.methods.base import Method, register
from sinkprobe.training.objectives import kl_retain_loss, npo_loss, sequence_log_likelihood


@register("npo")
class NPO(Method):
    reference_log_likelihood = True

    def forget_loss(self, out, batch, refs):
        ll = sequence_log_likelihood(out.logits, batch.f_ids, batch.f_targets)
        return npo_loss(ll, refs["ll_f"][batch.f_rows].to(ll.device), self.cfg.beta)

    def retain_loss(self, out, ref, batch):
        return kl_retain_loss(out.logits, ref.logits, batch.r_mask)
