"""The auxiliary confidence loss (Burns et al., 2023): trust your own confident guesses.

L = (1 - a) * CE(f, y_weak) + a * CE(f, hard(f)), with a ramped linearly from 0 to `alpha` over
the first `warmup` fraction of training, so the student first learns from the teacher and then
may disagree with it where it is confident. hard(f) thresholds the student's logits at the
batch quantile that matches the teacher's share of positives, as the paper does, so that the
self-targets cannot collapse onto one class.
"""

import torch

DEFAULTS = {"alpha": 0.75, "warmup": 0.2}


def confidence_loss(alpha: float, warmup: float):
    def loss(logits: torch.Tensor, weak: torch.Tensor, progress: float) -> torch.Tensor:
        a = alpha * min(1.0, progress / warmup) if warmup > 0 else alpha
        positive_share = float((weak > 0.5).float().mean())
        threshold = torch.quantile(logits.detach(), 1 - positive_share) if 0 < positive_share < 1 else 0.0
        own = (logits.detach() > threshold).float()
        # CE is linear in the target, so the mixture of two CEs is one CE on the mixed target.
        target = (1 - a) * weak + a * own
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return loss


def run(ctx):
    loss = confidence_loss(ctx.params["alpha"], ctx.params["warmup"])
    student = ctx.new_student().fit("train_unlabel", ctx.weak_targets(), loss=loss)
    return student.predict_proba(ctx.eval_split)
