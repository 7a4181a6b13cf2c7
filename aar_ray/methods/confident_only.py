"""Train only on rows the teacher is confident about (P below `low` or above `high`).

The released sandbox's `train_only_on_confident_labels`, with its thresholds 0.25 / 0.75.
"""

import numpy as np

DEFAULTS = {"low": 0.25, "high": 0.75, "loss": "hard"}

CHOICES = {"loss": ("hard", "soft")}


def run(ctx):
    p = ctx.weak_targets()
    keep = np.flatnonzero((p < ctx.params["low"]) | (p > ctx.params["high"]))
    ctx.log("kept_fraction", len(keep) / len(p))
    if len(keep) == 0:
        raise ValueError(f"no teacher label is below low={ctx.params['low']} or above "
                         f"high={ctx.params['high']}; widen the thresholds")
    student = ctx.new_student().fit("train_unlabel", p[keep], loss=ctx.params["loss"], rows=keep)
    return student.predict_proba(ctx.eval_split)
