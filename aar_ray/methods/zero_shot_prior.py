"""The student's own prior with no training: how well the answer matches the question.

The released sandbox's `ue_zeroshot` idea. The CPU student scores a pair by the cosine of its
two sentence vectors (the causal LM by log P(True) - log P(False)). A comparison needs no
threshold (A wins when it scores higher); a binary task needs one, set so that the share of
True predictions on train_unlabel matches the teacher's share, the only thing the teacher lends.
"""

import numpy as np

DEFAULTS = {"temperature": 20.0}


def run(ctx):
    student = ctx.new_student()
    scores = np.asarray(student.zero_shot_scores(ctx.eval_split), dtype=np.float64)
    threshold = 0.0
    if ctx.format == "binary":
        true_share = float((ctx.weak_targets() > 0.5).mean())
        threshold = float(np.quantile(student.zero_shot_scores("train_unlabel"), 1 - true_share))
        ctx.log("threshold", threshold)
    return 1 / (1 + np.exp(-ctx.params["temperature"] * (scores - threshold)))
