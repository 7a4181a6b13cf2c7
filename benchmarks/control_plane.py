"""Control-plane benchmark: how the scheduler, the scorer actor and MLflow records hold up as the
number of researchers grows. One JSON line of figures and ratios measured side by side in one run.

    .venv/bin/python benchmarks/control_plane.py                  # 10 and 100 researchers
    .venv/bin/python benchmarks/control_plane.py --scale full     # 10, 100 and 1,000
    .venv/bin/python benchmarks/control_plane.py --levels 3,6 --experiments 2 --hour-seconds 0.25

Set-up: a local Ray with logical GPUs (as many as the largest level has researchers, so an
experiment never waits for a GPU and what is left over is the control plane's own cost), one real
scorer actor (`aar_ray.scoring.scorer_actor`) on a small taxonomy testbed imported into a
temporary home, and MLflow records written through `aar_ray.tracking.Tracker` to a temporary
sqlite store by one recorder actor (sqlite takes one writer at a time).

Each scripted researcher (an asyncio loop in the driver, no LLM) runs `--experiments` times:
think, then run one experiment = a Ray task asking `num_gpus=1` that sleeps the scaled experiment
time and returns random P(True) for the validation split, then submit the predictions to the
scorer (keyed, as a campaign does), then write the MLflow record and wait for it.

Measured per experiment, reported as p50/p99 per level and as growth from the smallest to the
largest level:
  - scheduling overhead: the task's end-to-end time seen by the researcher minus its sleep;
  - scorer latency: the round trip of `scorer.submit`;
  - MLflow: the `Tracker.log_experiment` call itself (write), and the round trip a researcher
    waits for it, queueing behind other researchers' records included (wait).
Checked per level: no submission is lost (the scorer's audit log holds one `scored` line per
submission), budgets are exact (each researcher's budget is `--experiments`; `remaining()` is 0
afterwards and one more submission is refused and logged as such), and MLflow holds one run per
experiment.

Time is scaled: one real hour lasts `--hour-seconds` (1 s by default), so the load on the control
plane is ~3,600 times what the same researchers put on it in real time; `implied_real_time_capacity`
turns the measured service times back into researchers at real time.

Workload (shared with shared_gpu_pool.py):
  - experiment time: uniform on 2,870-6,350 s, the GPU time of one vanilla_w2s run in the study's
    released sandbox (one H200-class GPU, /work/shared/REFERENCE.md);
  - think time between experiments: lognormal, median 45 min, sigma 1.0 (mean 74 min). This is an
    assumption: the study reports no think-time distribution.

`--scale full` keeps about 550 experiments in flight, each a sleeping worker process of about
80 MB: it needs a machine with ~50 GB of memory.

Experiment tasks reuse their worker processes (`max_calls=0`). Ray's default for GPU tasks, and
`aar_ray.compute.submit`'s, is a fresh worker per task; on this machine that start costs about a
second, which at 1 s per scaled hour would be an hour of overhead, while at real time it is under
0.1% of a run. `fresh_worker_task_seconds` measures that cost separately.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

LEVELS = {"default": (10, 100), "full": (10, 100, 1000)}
TESTBED = "tax-small"
TESTBED_SIZES = (200, 600, 300)  # train_label, train_unlabel, test: as tests/conftest.py
BASELINE_SEEDS = 2


# --------------------------------------------------------------------------- workload

@dataclass(frozen=True)
class Workload:
    """Researcher think time and experiment time in real seconds, and the time scale."""

    hour_seconds: float = 1.0  # how long one real hour lasts in the benchmark
    experiment_min_s: float = 2870.0  # vanilla_w2s GPU time per run, REFERENCE.md
    experiment_max_s: float = 6350.0
    think_median_s: float = 45 * 60.0  # assumption
    think_sigma: float = 1.0  # assumption

    def scaled(self, real_seconds: float) -> float:
        return real_seconds / 3600.0 * self.hour_seconds

    def experiment_seconds(self, rng: np.random.Generator) -> float:
        return self.scaled(rng.uniform(self.experiment_min_s, self.experiment_max_s))

    def think_seconds(self, rng: np.random.Generator) -> float:
        return self.scaled(rng.lognormal(np.log(self.think_median_s), self.think_sigma))

    def mean_think_real_seconds(self) -> float:
        return float(self.think_median_s * np.exp(self.think_sigma ** 2 / 2))

    def mean_experiment_real_seconds(self) -> float:
        return (self.experiment_min_s + self.experiment_max_s) / 2

    def mean_cycle_real_seconds(self) -> float:
        """Mean real time from one experiment's start to the next's: think + experiment."""
        return self.mean_think_real_seconds() + self.mean_experiment_real_seconds()

    def describe(self) -> dict:
        return {"hour_seconds": self.hour_seconds,
                "experiment_real_s": f"uniform {self.experiment_min_s:.0f}-{self.experiment_max_s:.0f} "
                                     "(vanilla_w2s GPU time per run, the study's sandbox)",
                "think_real_s": f"lognormal median {self.think_median_s:.0f} sigma {self.think_sigma} "
                                f"(mean {self.mean_think_real_seconds():.0f}; assumption)"}


def percentiles(values) -> dict:
    values = np.asarray(list(values), dtype=float)
    if values.size == 0:
        return {"n": 0, "p50": None, "p99": None, "mean": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"n": int(values.size), "p50": round(float(p50), 4), "p99": round(float(p99), 4),
            "mean": round(float(values.mean()), 4)}


def local_ray(num_gpus: int, resources: dict | None = None) -> None:
    """A private local Ray whose GPUs are logical resources. Idle workers are kept (soft limit
    above the largest number of experiments in flight), so researchers' think time does not make
    Ray kill and restart the workers their next experiments need."""
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=num_gpus, resources=resources or {},
             include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _system_config={"num_workers_soft_limit": num_gpus + 8})
    if __name__ != "__main__":  # imported (tests): workers cannot import benchmarks/, ship it by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_gpus=1, num_cpus=0, max_calls=0)
def gpu_experiment(seconds: float, n_rows: int = 0, seed: int = 0) -> tuple:
    """A stand-in for one fit: hold a GPU for `seconds`, return random P(True) per row and the
    task's own start and end times."""
    started = time.time()
    time.sleep(seconds)
    probs = np.random.default_rng(seed).random(n_rows)
    return probs, started, time.time()


def warm_workers(count: int, rounds: int = 10) -> int:
    """Start the worker processes that `count` experiments in flight need, before timing: rounds
    of `count` tasks until all of one round ran at the same time (each on its own worker).
    Returns the rounds used."""
    seconds = max(0.3, count / 50)  # long enough for the whole round to be dispatched
    for round_ in range(1, rounds + 1):
        spans = [(started, ended) for _, started, ended in
                 ray.get([gpu_experiment.remote(seconds) for _ in range(count)])]
        if max(s for s, _ in spans) < min(e for _, e in spans):
            break
    return round_


@contextlib.contextmanager
def ray_output_to_stderr():
    """Ray prints its raylet warnings on stdout; keep stdout for the one JSON line."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


# --------------------------------------------------------------------------- set-up

def import_small_testbed(home: Path) -> None:
    """A small taxonomy testbed imported through the real importer, as tests/conftest.py does."""
    from aar_ray.testbeds import import_testbed, list_testbeds
    from aar_ray.testbeds.embedded import SplitSizes, generate

    if TESTBED in list_testbeds(home):
        return
    src = home / f"src-{TESTBED}"
    src.mkdir(parents=True, exist_ok=True)
    for split, rows in generate("taxonomy", sizes=SplitSizes(*TESTBED_SIZES)).items():
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_testbed(src, TESTBED, home)


@ray.remote(num_cpus=0)
class Recorder:
    """Writes MLflow records through Tracker, one at a time (sqlite takes one writer)."""

    def __init__(self, uri: str, ids: list):
        self.uri, self.ids, self.trackers = uri, ids, {}

    def _tracker(self, experiment: str):
        from aar_ray.tracking import Tracker

        if experiment not in self.trackers:
            self.trackers[experiment] = Tracker(self.uri, experiment)
        return self.trackers[experiment]

    def record(self, experiment: str, run_name: str, params: dict, metrics: dict, tags: dict,
               probs: np.ndarray) -> float:
        """Log one experiment (params, metrics, predictions, config); returns the seconds it took."""
        import pandas as pd

        start = time.perf_counter()
        self._tracker(experiment).log_experiment(run_name, params, metrics, tags,
                                                 predictions=pd.DataFrame({"id": self.ids, "p": probs}),
                                                 config=params)
        return time.perf_counter() - start

    def count_runs(self, experiment: str) -> int:
        return len(self._tracker(experiment).runs())


@dataclass
class Plane:
    scorer: object
    recorder: object
    ids: list
    workload: Workload
    budget: int  # submissions per researcher
    run_id: str


def start_plane(home: Path, store: Path, workload: Workload, budget: int) -> Plane:
    from aar_ray.scoring import ScorerConfig, scorer_actor
    from aar_ray.testbeds import load_public

    import_small_testbed(home)
    ids = load_public(TESTBED, home)["validation"]["id"].tolist()
    scorer = scorer_actor(home, ScorerConfig(submissions_per_submitter=budget, baseline_seeds=BASELINE_SEEDS))
    recorder = Recorder.remote(f"sqlite:///{store / 'mlflow.db'}", ids)
    ray.get([scorer.baselines.remote(TESTBED), recorder.count_runs.remote("warm-up")])  # computed once
    return Plane(scorer, recorder, ids, workload, budget, uuid.uuid4().hex[:8])


def fresh_worker_task_seconds(count: int) -> list[float]:
    """End-to-end seconds of no-op GPU tasks through aar_ray.compute.submit, one after another:
    each gets a fresh worker process (max_calls=1), as every real fit does."""
    from aar_ray.compute import ComputeConfig, submit

    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        ray.get(submit(time.sleep, 0.0, num_gpus=1, compute=ComputeConfig(num_cpus=0)))
        seconds.append(round(time.perf_counter() - start, 3))
    return seconds


# --------------------------------------------------------------------------- researchers

async def run_one_experiment(plane: Plane, researcher: str, index: int, seconds: float,
                             experiment: str) -> dict:
    key = f"{researcher}/{index}"
    submitted = time.time()
    probs, started, ended = await gpu_experiment.remote(seconds, len(plane.ids), zlib.crc32(key.encode()))
    returned = time.time()
    score = await plane.scorer.submit.remote(researcher, TESTBED, plane.ids, probs, key)
    scored = time.time()
    params = {"testbed": TESTBED, "method": "benchmark", "researcher": researcher, "index": index,
              "scaled_seconds": round(seconds, 4)}
    metrics = {k: score[k] for k in ("pgr", "transfer_acc", "weak_acc", "strong_acc")}
    tags = {"aar_kind": "experiment", "submitter": researcher, "aar_key": key}
    write_seconds = await plane.recorder.record.remote(experiment, key, params, metrics, tags, probs)
    return {"scheduling_overhead_s": (returned - submitted) - (ended - started),
            "dispatch_s": started - submitted, "scorer_latency_s": scored - returned,
            "mlflow_write_s": write_seconds, "mlflow_wait_s": time.time() - scored}


async def researcher_loop(plane: Plane, researcher: str, experiments: int, seed: int,
                          experiment: str) -> list[dict]:
    rng = np.random.default_rng(seed)
    timings = []
    for index in range(experiments):
        await asyncio.sleep(plane.workload.think_seconds(rng))
        timings.append(await run_one_experiment(plane, researcher, index,
                                                plane.workload.experiment_seconds(rng), experiment))
    return timings


async def run_researchers(plane: Plane, names: list[str], experiments: int, experiment: str) -> list[dict]:
    loops = [researcher_loop(plane, name, experiments, seed, experiment) for seed, name in enumerate(names)]
    return [t for timings in await asyncio.gather(*loops) for t in timings]


# --------------------------------------------------------------------------- checks

def check_books(plane: Plane, names: list[str], experiments: int, experiment: str) -> dict:
    """Budgets exact, nothing lost: audit log, remaining() and MLflow agree with what was sent."""
    from aar_ray.scoring import BudgetExhausted

    submitted = len(names) * experiments
    remaining = ray.get([plane.scorer.remaining.remote(n) for n in names])
    refused = 0
    for name in names:  # one submission past the budget each: refused, costs nothing
        try:
            ray.get(plane.scorer.submit.remote(name, TESTBED, plane.ids, np.full(len(plane.ids), 0.5)))
        except ray.exceptions.RayTaskError as err:
            refused += isinstance(err.cause, BudgetExhausted)
    mine = set(names)
    ours = [e for e in ray.get(plane.scorer.audit_log.remote()) if e["submitter"] in mine]
    scored = sum(e["outcome"] == "scored" for e in ours)
    rejected = sum(e["outcome"].startswith("rejected") for e in ours)
    runs = ray.get(plane.recorder.count_runs.remote(experiment))
    return {"submissions": submitted, "audit_scored": scored, "lost_submissions": submitted - scored,
            "remaining_exact": all(r == plane.budget - experiments for r in remaining),
            "over_budget_refused": refused, "over_budget_audited": rejected,
            "mlflow_runs": runs, "lost_records": submitted - runs}


def books_balance(level: dict) -> bool:
    checks = level["checks"]
    return (checks["lost_submissions"] == 0 and checks["lost_records"] == 0 and checks["remaining_exact"]
            and checks["over_budget_refused"] == checks["over_budget_audited"] == level["researchers"])


# --------------------------------------------------------------------------- levels

def run_level(plane: Plane, researchers: int, experiments: int) -> dict:
    warm_rounds = warm_workers(researchers)
    names = [f"bench-{plane.run_id}-{researchers}-r{i}" for i in range(researchers)]
    experiment = f"control-plane-{plane.run_id}-{researchers}"
    start = time.perf_counter()
    timings = asyncio.run(run_researchers(plane, names, experiments, experiment))
    wall = time.perf_counter() - start
    figures = {key: percentiles(t[key] for t in timings) for key in timings[0]}
    return {"researchers": researchers, "experiments": len(timings), "warm_up_rounds": warm_rounds,
            "wall_seconds": round(wall, 2),
            "experiments_per_second": round(len(timings) / wall, 2), **figures,
            "checks": check_books(plane, names, experiments, experiment)}


def growth(levels: list[dict]) -> dict:
    """Largest level's figure over the smallest level's, p50 and p99 of each timing."""
    low, high = levels[0], levels[-1]
    ratios = {}
    for key in ("scheduling_overhead_s", "scorer_latency_s", "mlflow_write_s", "mlflow_wait_s"):
        for stat in ("p50", "p99"):
            a, b = low[key][stat], high[key][stat]
            ratios[f"{key.removesuffix('_s')}_{stat}"] = round(b / a, 2) if a else None
    return ratios


def implied_real_time_capacity(levels: list[dict], workload: Workload) -> dict:
    """Researchers one scorer actor and one sqlite writer could serve at real time, from their
    service times at the smallest level (each serves one call at a time)."""
    cycle = workload.mean_cycle_real_seconds()
    scorer_s, write_s = levels[0]["scorer_latency_s"]["mean"], levels[0]["mlflow_write_s"]["mean"]
    return {"mean_researcher_cycle_real_s": round(cycle),
            "scorer_researchers": int(cycle / scorer_s), "mlflow_sqlite_researchers": int(cycle / write_s)}


# --------------------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(LEVELS), default="default")
    parser.add_argument("--levels", type=lambda s: tuple(int(x) for x in s.split(",")),
                        help="researcher counts, e.g. 10,100 (overrides --scale)")
    parser.add_argument("--experiments", type=int, default=3, help="experiments per researcher")
    parser.add_argument("--hour-seconds", type=float, default=1.0, help="how long one real hour lasts")
    parser.add_argument("--fresh-tasks", type=int, default=4,
                        help="no-op GPU tasks timed through aar_ray.compute.submit (fresh workers)")
    parser.add_argument("--home", help="an aar home to import the small testbed into (default: temporary)")
    return parser.parse_args(argv)


def run_levels(home: Path, store: Path, workload: Workload, levels: list[int], experiments: int,
               fresh_tasks: int):
    local_ray(num_gpus=max(levels))
    try:
        start = time.perf_counter()
        plane = start_plane(home, store, workload, budget=experiments)
        setup_seconds = time.perf_counter() - start
        fresh = fresh_worker_task_seconds(fresh_tasks)
        return setup_seconds, fresh, [run_level(plane, n, experiments) for n in levels]
    finally:
        ray.shutdown()


def main(argv=None) -> dict:
    args = parse_args(argv)
    levels = sorted(args.levels or LEVELS[args.scale])
    workload = Workload(hour_seconds=args.hour_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "home"
        with ray_output_to_stderr():
            setup_seconds, fresh, results = run_levels(home, Path(tmp), workload, levels, args.experiments,
                                                       args.fresh_tasks)
    report = {
        "benchmark": "control_plane", "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "levels": levels, "experiments_per_researcher": args.experiments, "workload": workload.describe(),
        "setup_seconds": round(setup_seconds, 2),
        "fresh_worker_task_seconds": percentiles(fresh),
        "per_level": results, f"growth_{levels[0]}_to_{levels[-1]}": growth(results),
        "implied_real_time_capacity": implied_real_time_capacity(results, workload),
        "all_checks_pass": all(books_balance(r) for r in results),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
