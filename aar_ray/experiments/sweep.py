"""A baseline sweep: every (testbed, method, seed) of a BaselineConfig as parallel Ray tasks.

Order of work: make sure testbeds, sentence vectors, weak labels and the scorer's fixed
baselines exist (once, in the driver, with progress bars), then fan the experiments out as
Ray tasks, score and record each as it finishes, and return the leaderboard.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import ray
from aar_ray.progress import progress as progress_bar

from aar_ray import environment
from aar_ray.config import BaselineConfig
from aar_ray.experiments import ExperimentSpec, record_experiment, run_method, score_result
from aar_ray.methods import parse_method
from aar_ray.models import release_student_pool
from aar_ray.models.artifacts import testbed_vectors, weak_labels
from aar_ray.scoring import read_operator_key, scorer_actor
from aar_ray.testbeds import ensure_testbed
from aar_ray.tracking import Tracker, leaderboard, plot_leaderboard


def connect_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local one sized to this machine."""
    if ray.is_initialized():
        return
    # ray.init replaces the SIGTERM handler with a plain sys.exit; a command that made SIGTERM
    # (`ray job stop`) an interrupt, to end its MLflow runs and give back its campaign, keeps it.
    main = threading.current_thread() is threading.main_thread()
    ours = signal.getsignal(signal.SIGTERM) if main else None
    if environment.ray_address():
        ray.init(namespace="aar")
    else:
        # Ray's own processes (GCS, raylet, and the workers the raylet starts) are children of this
        # one, in the terminal's process group. Started with SIGINT ignored (inherited across exec),
        # a Ctrl-C reaches this driver alone, which then stops the campaign through a Ray still up.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            # address="local": always a fresh instance here, never some other cluster on this machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, namespace="aar",
                     log_to_driver=False)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
    if callable(ours):
        signal.signal(signal.SIGTERM, ours)


# A worker or node that dies mid-run is retried (the experiment is pure: same spec, same answer);
# an exception raised by the method itself is not, it is the experiment's result.
EXPERIMENT_RETRIES = 3


@ray.remote(num_cpus=1, max_retries=EXPERIMENT_RETRIES, retry_exceptions=False)
def run_method_task(spec: ExperimentSpec):
    import torch

    torch.set_num_threads(1)  # one core per task: parallel tasks must not fight over threads
    if spec.code is not None:
        from aar_ray.experiments.ideas import run_idea

        result = run_idea(spec)  # agent-written code: only ever inside the sandbox
    else:
        result = run_method(spec)
    result.node_id = ray.get_runtime_context().get_node_id()
    return result


def submit_experiment(spec: ExperimentSpec):
    """The experiment as a Ray task, holding spec.num_gpus GPUs only while it runs."""
    return run_method_task.options(num_gpus=spec.num_gpus).remote(spec)


def experiment_specs(config: BaselineConfig) -> list[ExperimentSpec]:
    home = str(Path(config.home).resolve())
    specs = []
    for testbed in config.testbeds:
        for method_spec in config.methods:
            name, params = parse_method(method_spec)
            for seed in config.seeds:
                specs.append(ExperimentSpec(testbed, name, seed, home, params, config.student,
                                            config.teacher, num_gpus=config.experiment_gpus))
    return specs


def prepare(config: BaselineConfig, scorer, progress: bool = True) -> None:
    """Everything experiments share, computed once before they start."""
    for testbed in progress_bar(config.testbeds, desc="preparing testbeds", unit="testbed", disable=not progress):
        ensure_testbed(testbed, config.home)
        testbed_vectors(testbed, config.home, config.student.encoder, progress=progress)
        for seed in set(config.seeds) | set(range(1, config.scorer.baseline_seeds + 1)):
            weak_labels(testbed, config.home, config.teacher, seed)
        ray.get(scorer.baselines.remote(testbed))


def worker_lost(err: Exception) -> str:
    """The error an experiment records when its worker or node died on every attempt."""
    return (f"the experiment's worker died on each of its {1 + EXPERIMENT_RETRIES} attempts "
            f"({type(err).__name__}); nothing was scored")


# How long an experiment may run before it is cancelled and recorded as an error: an idea is
# stopped by its sandbox's wall clock well before; a library method on a GPU may take hours.
EXPERIMENT_TIMEOUT_S = 12 * 3600.0


def finish(ref, scorer, submitter: str, spec: ExperimentSpec, operator_key: str | None = None,
           key: str | None = None, analyst: str | None = None):
    """(result, score, error) of a run_method_task, scored under `key` when given; a failed
    method, a worker that died on every attempt, or one that never finishes is an error, not a
    crash (nor a hang)."""
    try:
        result = ray.get(ref, timeout=EXPERIMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        return None, {}, f"the experiment did not finish within {EXPERIMENT_TIMEOUT_S / 3600:.0f} h and was cancelled"
    except ray.exceptions.RayTaskError as err:
        return None, {}, f"{type(err.cause).__name__}: {err.cause}"
    except ray.exceptions.RayError as err:
        return None, {}, worker_lost(err)
    score, error = score_result(scorer, submitter, spec, result, operator_key, key, analyst)
    return result, score, error


def run_sweep(config: BaselineConfig, progress: bool = True) -> pd.DataFrame:
    connect_ray()
    scorer = scorer_actor(config.home, config.scorer, config.teacher, config.student)
    prepare(config, scorer, progress)
    tracker = Tracker(config.tracking.uri or None, config.tracking.experiment, Path(config.home) / "tracking-spool")
    operator_key = read_operator_key(config.home)  # a sweep is the operator's: plain scores, no budget
    parent = tracker.start_parent("baseline-sweep", {
        "testbeds": ",".join(config.testbeds), "methods": ",".join(config.methods),
        "seeds": ",".join(map(str, config.seeds))})
    pending = {submit_experiment(spec): spec for spec in experiment_specs(config)}
    with progress_bar(total=len(pending), desc="experiments", unit="run", disable=not progress) as bar:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ref)
            result, score, error = finish(ref, scorer, config.submitter, spec, operator_key)
            record_experiment(tracker, spec, result, score, config.submitter, error, parent)
            bar.set_postfix_str(f"{spec.label}/{spec.testbed} PGR {score.get('pgr', 'failed')}")
            bar.update()
    release_student_pool(config.student)  # the shared inference pool's GPUs go back to the cluster
    table = leaderboard(tracker.runs(parent_run_id=parent))
    with tempfile.TemporaryDirectory() as tmp:
        csv, png = Path(tmp) / "leaderboard.csv", Path(tmp) / "leaderboard.png"
        table.to_csv(csv, index=False)
        plot_leaderboard(table, png)
        (Path(tmp) / "config.json").write_text(pd.Series(asdict(config)).to_json(indent=2))
        tracker.finish_parent(parent, [csv, png, Path(tmp) / "config.json"])
    return table
