"""Scoring: one named Ray actor, `aar-scorer`, holds the sealed labels for the whole cluster.

`scorer_actor(home, ...)` starts it or returns the running one; every experiment hands its
predictions to it. Idea code never gets a handle: it runs without a Ray connection.
"""

from __future__ import annotations

from pathlib import Path

import ray

from aar_ray.models import StudentConfig, TeacherConfig
from aar_ray.scoring.scorer import (BudgetExhausted, Scorer, ScoreError, ScorerConfig, pgr,
                                    read_operator_key)

SCORER_NAME = "aar-scorer"
NAMESPACE = "aar"


def scorer_actor(home: str | Path, config: ScorerConfig = ScorerConfig(),
                 teacher: TeacherConfig = TeacherConfig(), student: StudentConfig = StudentConfig()):
    """The cluster's scorer actor, created on first call. It restarts if its process dies;
    budgets are recounted from the audit log, so a restart forgets nothing."""
    return ray.remote(Scorer).options(
        name=SCORER_NAME, namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
        max_restarts=-1, max_concurrency=4,  # no task retries: a submission is never counted twice
    ).remote(str(Path(home).resolve()), config, teacher, student)


__all__ = ["BudgetExhausted", "Scorer", "ScoreError", "ScorerConfig", "pgr", "read_operator_key", "scorer_actor"]
