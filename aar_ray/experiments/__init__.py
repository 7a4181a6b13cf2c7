"""An experiment: one method, one testbed, one seed -> predictions -> scorer -> MLflow run.

`run_method` is the worker half (public data in, predictions out; it never sees a sealed label).
`record_experiment` is the driver half: it hands the predictions to the scorer and writes the
MLflow run. `run_sweep` (in sweep.py) fans many experiments out as Ray tasks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from aar_ray.methods import METHODS, MethodContext, method_label
from aar_ray.models import StudentConfig, TeacherConfig, resolve_student_config, student_factory
from aar_ray.models.artifacts import WeakLabels, weak_labels
from aar_ray.testbeds import eval_rows, load_public, testbed_meta


@dataclass
class ExperimentSpec:
    testbed: str
    method: str
    seed: int
    home: str
    params: dict = field(default_factory=dict)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    eval_split: str = "validation"  # the half of the test split the scorer scores; the method never knows
    code: str | None = None  # an idea file's source; it then runs in the sandbox as `method`
    num_gpus: float = 0.0  # GPUs the experiment task holds while it runs (0 on the CPU testbeds)
    shuffle_teacher: bool = False  # the teacher-ablation control: weak labels permuted across rows

    @property
    def kind(self) -> str:
        """"idea" (an idea file's code, run in the sandbox) or "method" (a library method): the
        forum records it as the result's kind (aar_ray.forum.records.KINDS)."""
        return "idea" if self.code is not None else "method"

    @property
    def name(self) -> str:
        """What the forum records as the result's name: the idea's name, or the method's label."""
        return self.method if self.code is not None else method_label(self.method, self.params)

    @property
    def label(self) -> str:
        """For people (run names, MLflow): `idea:<name>` for an idea. Code reads `kind` and `name`."""
        return f"idea:{self.name}" if self.kind == "idea" else self.name

    @property
    def run_name(self) -> str:
        ablation = " [shuffled teacher]" if self.shuffle_teacher else ""
        return f"{self.label}/{self.testbed}/seed{self.seed}{ablation}"


@dataclass
class MethodResult:
    """Predictions for every row of the public test split (ids in its order), what the method
    logged, and what it cost."""

    ids: list
    probs: np.ndarray
    metrics: dict
    wall_seconds: float
    cpu_seconds: float
    node_id: str = ""  # the Ray node that ran it ("" outside Ray): on a cluster, which worker

    def half(self, split: str) -> tuple[list, np.ndarray]:
        """(ids, probs) of the rows the scorer scores for `split` (validation or holdout)."""
        keep = eval_rows(self.ids, split)
        return [i for i, k in zip(self.ids, keep) if k], self.probs[keep]


def teacher_labels(spec: ExperimentSpec) -> WeakLabels:
    """What the experiment's method sees of the teacher: its labels, shuffled across rows when
    the spec is the teacher-ablation control."""
    weak = weak_labels(spec.testbed, spec.home, spec.teacher, spec.seed)
    return weak.shuffled(spec.seed) if spec.shuffle_teacher else weak


def run_method(spec: ExperimentSpec, run=None, weak: WeakLabels | None = None) -> MethodResult:
    """Run one method for one seed on public data; return its predictions for the whole test
    split. The method is not told which half will be scored (spec.eval_split), nor whether the
    teacher's labels were shuffled: research runs and the operator's checks look the same to it.
    `run` is an idea's run(ctx) (see ideas.py); by default the library method spec.method.
    `weak` is `teacher_labels(spec)` when the caller already has it (a sandboxed idea cannot
    read the cache)."""
    wall, cpu = time.perf_counter(), time.process_time()
    meta = testbed_meta(spec.testbed, spec.home)
    public = load_public(spec.testbed, spec.home)
    if weak is None:
        weak = teacher_labels(spec)
    ctx = MethodContext(
        testbed=spec.testbed, format=meta["format"], public=public, weak=weak,
        eval_split="test", seed=spec.seed, params=dict(spec.params),
        new_student=student_factory(spec.testbed, spec.home, spec.student, spec.seed))
    probs = np.asarray((run or METHODS[spec.method].run)(ctx), dtype=np.float64).reshape(-1)
    ids = public["test"]["id"].tolist()
    if len(probs) != len(ids):
        raise ValueError(f"method {spec.method} returned {len(probs)} predictions for the "
                         f"{len(ids)} rows of the test split")
    return MethodResult(ids, probs, ctx.metrics, time.perf_counter() - wall, time.process_time() - cpu)


def experiment_params(spec: ExperimentSpec) -> dict:
    student = resolve_student_config(spec.student, spec.testbed, spec.home)
    return {"testbed": spec.testbed, "method": spec.label, "method_name": spec.method,
            "kind": "idea" if spec.code is not None else "library",
            "seed": spec.seed, "eval_split": spec.eval_split, "shuffle_teacher": spec.shuffle_teacher,
            **{f"param.{k}": v for k, v in spec.params.items()},
            **{f"student.{k}": v for k, v in asdict(student).items()},
            **{f"teacher.{k}": v for k, v in asdict(spec.teacher).items()}}


SCORER_TIMEOUT_S = 600.0  # an answer takes milliseconds; the first of a testbed computes its checks
# How long a submission waits for a dead scorer to come back: Ray restarts it (on another node
# if its node died) and it reloads its audit log and baselines, which takes a while on a busy node.
SCORER_RESTART_S = 600.0


def score_result(scorer, submitter: str, spec: ExperimentSpec, result: MethodResult,
                 operator_key: str | None = None, key: str | None = None,
                 analyst: str | None = None) -> tuple[dict, str | None]:
    """Hand the predictions for spec.eval_split to the scorer actor: validation for anyone (the
    operator key gets the plain record instead of a researcher's feedback), holdout with the
    operator key only. `key` makes the submission idempotent; `analyst` is whose query budget it
    draws on (a campaign). Returns (score, None), or ({}, why) when refused or unanswered."""
    import ray

    ids, probs = result.half(spec.eval_split)
    deadline, attempt = time.monotonic() + SCORER_RESTART_S, 0
    while time.monotonic() < deadline:
        if spec.eval_split == "holdout":
            call = scorer.score_holdout.remote(operator_key, submitter, spec.testbed, ids, probs, key)
        else:
            call = scorer.submit.remote(submitter, spec.testbed, ids, probs, key, analyst=analyst,
                                        operator_key=operator_key)
        try:
            return ray.get(call, timeout=SCORER_TIMEOUT_S), None
        except ray.exceptions.GetTimeoutError:
            return {}, f"the scorer did not answer within {SCORER_TIMEOUT_S:.0f} s"
        except ray.exceptions.RayTaskError as err:
            return {}, f"{type(err.cause).__name__}: {err.cause}"
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            # The scorer died; Ray restarts it and it rebuilds budgets and keyed answers from its
            # audit log, so resubmitting under the same key cannot count the experiment twice.
            time.sleep(min(2.0 ** attempt, 10.0))
            attempt += 1
    return {}, f"the scorer was unreachable for {SCORER_RESTART_S:.0f} s ({attempt} attempts)"


def record_experiment(tracker, spec: ExperimentSpec, result: MethodResult | None, score: dict,
                      submitter: str, error: str | None = None, parent_run_id: str | None = None,
                      key: str | None = None, extra_tags: dict | None = None) -> str:
    """One MLflow run for one experiment, scored or failed; returns the run id. With a `key`,
    a run already recorded under it is returned instead of a second one. `extra_tags` say more
    about it (`researcher`: whose idea an operator's re-run is)."""
    if key is not None:
        found = tracker.find_run(key)
        if found is not None:
            return found
    metrics = {k: score.get(k) for k in ("pgr", "transfer_acc", "weak_acc", "strong_acc")}
    predictions = None
    if result is not None:
        ids, probs = result.half(spec.eval_split)
        predictions = pd.DataFrame({"id": ids, "p": probs})
        metrics.update(wall_seconds=result.wall_seconds, cpu_seconds=result.cpu_seconds,
                       **{f"method.{k}": v for k, v in result.metrics.items()})
    tags = {"aar_kind": "experiment", "submitter": submitter, "split": spec.eval_split,
            **({"ablation": "shuffled_teacher"} if spec.shuffle_teacher else {}),
            **({"flags": ",".join(score["flags"])} if score.get("flags") else {}),
            **({"error": error[:4000]} if error else {}), **({"aar_key": key} if key else {}),
            **({"ray_node_id": result.node_id} if result is not None and result.node_id else {}),
            **(extra_tags or {})}
    return tracker.log_experiment(
        spec.run_name, experiment_params(spec), metrics, tags,
        predictions=predictions, config={k: v for k, v in asdict(spec).items() if k != "code"},
        code=spec.code, parent_run_id=parent_run_id)
