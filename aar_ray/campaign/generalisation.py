"""The generalisation check: the study's decisive step.

The top-k ideas by validation PGR are re-run from their code — not their submitted predictions —
on the holdout half of the research testbed and on held-out testbeds, several seeds each, scored
with the operator key. An idea whose holdout PGR falls well below its validation PGR is flagged.
The teacher-ablation control re-runs the same ideas on the research testbed with the teacher's
labels shuffled; an idea whose score does not move is flagged `ignores_teacher`.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import ray

from aar_ray.experiments import ExperimentSpec, record_experiment
from aar_ray.experiments.sweep import finish, submit_experiment
from aar_ray.methods import parse_method
from aar_ray.scoring import read_operator_key, scorer_actor

# two-sided 95% t quantiles by degrees of freedom; seeds are few, so a z of 1.96 would be too tight
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval."""
    if len(values) < 2:
        return (float(values[0]) if values else math.nan), math.nan
    sd = float(np.std(values, ddof=1))
    return float(np.mean(values)), _T95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


def top_ideas(forum, testbed: str, k: int) -> list[dict]:
    """Best result per distinct idea, best first."""
    best: dict[str, dict] = {}
    for row in forum.leaderboard(testbed, limit=10_000):
        best.setdefault(row["idea"], row)
    return list(best.values())[:k]


def _spec_for(idea: dict, forum, config, testbed: str, seed: int) -> ExperimentSpec:
    from pathlib import Path

    home = str(Path(config.home).resolve())
    if idea["idea"].startswith("idea:"):
        code = forum.read_code(idea["code_ref"])["code"]
        return ExperimentSpec(testbed, idea["idea"][5:], seed, home, {}, config.student, config.teacher,
                              eval_split="holdout", code=code, num_gpus=config.experiment_gpus)
    name, params = parse_method(idea["idea"])
    return ExperimentSpec(testbed, name, seed, home, params, config.student, config.teacher,
                          eval_split="holdout", num_gpus=config.experiment_gpus)


def generalisation_check(config, forum, tracker, parent_run_id: str) -> list[dict]:
    scorer = scorer_actor(config.home, config.scorer, config.teacher, config.student)
    key = read_operator_key(config.home)
    testbeds = [config.testbed, *config.heldout_testbeds]
    ideas = top_ideas(forum, config.testbed, config.generalisation.top_k)
    specs = [(idea, _spec_for(idea, forum, config, testbed, seed))
             for idea in ideas for testbed in testbeds for seed in config.generalisation.seeds]
    if config.generalisation.teacher_ablation:  # the same runs on the research testbed, teacher shuffled
        specs += [(idea, replace(spec, shuffle_teacher=True)) for idea, spec in specs
                  if spec.testbed == config.testbed]
    jobs = [(idea, spec, submit_experiment(spec)) for idea, spec in specs]
    scores: dict[tuple[str, str, bool], list[float]] = {}
    for idea, spec, ref in jobs:
        result, score, error = finish(ref, scorer, "operator", spec, key)
        record_experiment(tracker, spec, result, score, "operator", error, parent_run_id)
        if "pgr" in score:
            scores.setdefault((idea["idea"], spec.testbed, spec.shuffle_teacher), []).append(score["pgr"])
    table = []
    for idea in ideas:
        row = {"idea": idea["idea"], "researcher": idea["researcher"], "validation_pgr": idea["pgr"]}
        for testbed in testbeds:
            mean, ci = mean_ci(scores.get((idea["idea"], testbed, False), []))
            row[f"{testbed}_holdout_pgr"], row[f"{testbed}_ci95"] = round(mean, 3), round(ci, 3)
        row["flagged"] = bool(row[f"{config.testbed}_holdout_pgr"] < idea["pgr"] - config.generalisation.flag_drop)
        if config.generalisation.teacher_ablation:
            row.update(teacher_ablation(idea, row[f"{config.testbed}_holdout_pgr"],
                                        scores.get((idea["idea"], config.testbed, True), []),
                                        config.generalisation.ablation_min_change, forum, tracker))
        table.append(row)
    return table


IGNORES_TEACHER = "ignores_teacher"


def teacher_ablation(idea: dict, holdout_pgr: float, shuffled_pgrs: list[float], min_change: float,
                     forum, tracker) -> dict:
    """Compare an idea's holdout PGR with the teacher's labels as given and shuffled. If it barely
    moves, the idea is not using the teacher: flag its result on the forum and its MLflow runs."""
    shuffled, _ = mean_ci(shuffled_pgrs)
    ignores = bool(shuffled_pgrs) and abs(holdout_pgr - shuffled) < min_change
    if ignores:
        forum.add_flag(idea["id"], IGNORES_TEACHER)
        for run_id in json.loads(idea.get("run_ids") or "[]"):
            if not str(run_id).startswith("pending:"):  # still in the spool: no run to tag yet
                tracker.add_flag(run_id, IGNORES_TEACHER)
    return {"shuffled_teacher_pgr": round(shuffled, 3), IGNORES_TEACHER: ignores}
