"""Born-again self-training: fit on the teacher, then refit a fresh student on the student's
own labels of train_unlabel, `rounds` times.

Each round keeps what the student generalised and drops teacher errors it did not fit.
"""

DEFAULTS = {"rounds": 2, "loss": "hard"}

CHOICES = {"loss": ("hard", "soft")}


def run(ctx):
    targets = ctx.weak_targets()
    student = ctx.new_student().fit("train_unlabel", targets, loss=ctx.params["loss"])
    for round_ in range(ctx.params["rounds"]):
        relabelled = student.predict_proba("train_unlabel")
        ctx.log(f"agreement_with_teacher_round{round_ + 1}",
                float(((relabelled > 0.5) == (ctx.weak_targets() > 0.5)).mean()))
        student = ctx.new_student().fit("train_unlabel", relabelled, loss=ctx.params["loss"])
    return student.predict_proba(ctx.eval_split)
