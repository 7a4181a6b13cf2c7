"""Operator-only: re-run a method's code from scratch on the holdout split and score it.

Agents only ever see validation numbers; this is the check that a method did not just fit them.
"""

from __future__ import annotations

from pathlib import Path

import ray

from aar_ray.experiments import ExperimentSpec, record_experiment
from aar_ray.experiments.sweep import connect_ray, finish, submit_experiment
from aar_ray.methods import parse_method
from aar_ray.models import StudentConfig, TeacherConfig
from aar_ray.scoring import ScorerConfig, read_operator_key, scorer_actor
from aar_ray.testbeds import ensure_testbed
from aar_ray.tracking import Tracker


def score_holdout(testbed: str, method: str, seeds: list[int], home: str, tracking_uri: str | None,
                  experiment: str = "aar-holdout", student: StudentConfig = StudentConfig(),
                  teacher: TeacherConfig = TeacherConfig(), shuffle_teacher: bool = False) -> list[dict]:
    connect_ray()
    home = str(Path(home).resolve())
    ensure_testbed(testbed, home)
    name, params = parse_method(method)
    scorer = scorer_actor(home, ScorerConfig(), teacher, student)
    key = read_operator_key(home)
    tracker = Tracker(tracking_uri, experiment, Path(home) / "tracking-spool")  # this home, not the default one
    rows = []
    for seed in seeds:
        spec = ExperimentSpec(testbed, name, seed, home, params, student, teacher, eval_split="holdout",
                              shuffle_teacher=shuffle_teacher)
        result, score, error = finish(submit_experiment(spec), scorer, "operator", spec, key)
        run_id = record_experiment(tracker, spec, result, score, "operator", error)
        if error:
            raise RuntimeError(f"seed {seed}: {error}")
        rows.append({"seed": seed, "run_id": run_id, **score})
    return rows
