"""Train the student on the teacher's labels of train_unlabel (hard 0/1 by default, or soft).

The released sandbox's `vanilla_w2s`; every other method is measured against it.
"""

DEFAULTS = {"loss": "hard"}

CHOICES = {"loss": ("hard", "soft")}


def run(ctx):
    student = ctx.new_student().fit("train_unlabel", ctx.weak_targets(), loss=ctx.params["loss"])
    return student.predict_proba(ctx.eval_split)
