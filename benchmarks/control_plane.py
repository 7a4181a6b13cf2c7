"""Control-plane benchmark: how the scheduler, the scorer actor and MLflow records hold up as the
number of researchers grows. One JSON line of figures and ratios measured side by side in one run.

    .venv/bin/python benchmarks/control_plane.py                  # 10, 100 and 1,000 researchers
    .venv/bin/python benchmarks/control_plane.py --scale small    # 10 and 100
    .venv/bin/python benchmarks/control_plane.py --levels 3,6 --experiments 2 --hour-seconds 0.25

Set-up: a local Ray with logical GPUs, one real scorer actor (`aar_ray.scoring.scorer_actor`) on
a small taxonomy testbed imported into a temporary home, and MLflow records written through
`aar_ray.tracking.Tracker` to a temporary sqlite store by one recorder actor (sqlite takes one
writer at a time).

GPUs: Ray has `--gpu-pool` logical GPUs (100 by default), or as many as the largest level has
researchers if that is fewer. A level with at most that many researchers has a GPU free for
every experiment (10 and 100 researchers); a level with more shares them as one pool (1,000
researchers: 100 GPUs, 10 researchers per GPU), the policy `shared_gpu_pool.py` measures, and
its experiments queue for a free GPU. The pool bounds the experiments in flight, because each is
a Ray worker process: measured here, a sleeping experiment worker holds ~60 MB of private memory
(~130 MB RSS; Ray imports numpy and, through its serialization add-ons, pydantic, starlette and
pyarrow into every worker; the task itself imports nothing more) and costs ~7 ms of CPU per
second even when idle. 1,000 researchers under this workload start with a burst of ~775
experiments in flight: one GPU each would take ~45-50 GB and more CPU than the 2 cores here have.

Each scripted researcher (an asyncio loop in the driver, no LLM) runs `--experiments` times:
think, then run one experiment = a Ray task asking `num_gpus=1` that sleeps the scaled experiment
time and returns random P(True) for the validation split, then submit the predictions to the
scorer (keyed, as a campaign does), then write the MLflow record and wait for it.

Measured per experiment, reported as p50/p99 per level and as growth from each level to the next
and from the smallest to the largest (same definitions at every level):
  - scheduling overhead: the task's end-to-end time seen by the researcher minus its sleep, over
    the experiments submitted while a GPU was free (fewer than the pool's GPUs in flight, i.e.
    submitted and not yet returned, as the driver counts them: all researchers are coroutines of
    the driver, so the count is exact). At 10 and 100 researchers that is every experiment;
    `submitted_with_gpu_free` says how many;
  - GPU queue wait: for the experiments submitted while every GPU was taken, the task's start
    minus its submission (none at 10 and 100 researchers);
  - scorer latency: the round trip of `scorer.submit`;
  - MLflow: the `Tracker.log_experiment` call itself (write), and the round trip a researcher
    waits for it, queueing behind other researchers' records included (wait).
Checked per level: no submission is lost (the scorer's audit log holds one `scored` line per
submission), budgets are exact (each researcher's budget is `--experiments`; `remaining()` is 0
afterwards and one more submission is refused and logged as such), MLflow holds one run per
experiment, and no more experiments ran at once than there are GPUs (from the tasks' own start
and end times).

Memory is sampled while it runs (`MemorySampler`): the proportional set size of the driver and
every process it started (Ray's, the actors', the workers'), the RSS sum, the experiment workers
alive, a worker's private memory, and the memory the machine had left; per level and overall.

Time is scaled: one real hour lasts `--hour-seconds` (1 s by default), so the load on the control
plane is ~3,600 times what the same researchers put on it in real time; `implied_real_time_capacity`
turns the measured service times back into researchers at real time.

Workload (shared with shared_gpu_pool.py):
  - experiment time: uniform on 2,870-6,350 s, the GPU time of one vanilla_w2s run in the study's
    released sandbox (one H200-class GPU, /work/shared/REFERENCE.md);
  - think time between experiments: lognormal, median 45 min, sigma 1.0 (mean 74 min). This is an
    assumption: the study reports no think-time distribution.

Experiment tasks reuse their worker processes (`max_calls=0`). Ray's default for GPU tasks, and
a `max_calls=1` task's, is a fresh worker per task; on this machine that start costs about a
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
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import ray

LEVELS = {"small": (10, 100), "full": (10, 100, 1000)}
GPU_POOL = 100  # logical GPUs at most: a level with more researchers shares them (memory bound)
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
    seconds = max(0.5, count / 20)  # long enough for the whole round to be dispatched on 2 busy cores
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
    from aar_ray.testbeds import eval_ids

    import_small_testbed(home)
    ids = eval_ids(TESTBED, home, "validation")
    scorer = scorer_actor(home, ScorerConfig(queries_per_analyst=budget, baseline_seeds=BASELINE_SEEDS))
    recorder = Recorder.remote(f"sqlite:///{store / 'mlflow.db'}", ids)
    ray.get([scorer.baselines.remote(TESTBED), recorder.count_runs.remote("warm-up")])  # computed once
    return Plane(scorer, recorder, ids, workload, budget, uuid.uuid4().hex[:8])


def _no_op() -> None:
    pass


def fresh_worker_task_seconds(count: int) -> list[float]:
    """End-to-end seconds of no-op GPU tasks, one after another: each gets a fresh worker process
    (max_calls=1, Ray's default for GPU tasks)."""
    no_op = ray.remote(max_calls=1, num_gpus=1, num_cpus=0)(_no_op)
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        ray.get(no_op.remote())
        seconds.append(round(time.perf_counter() - start, 3))
    return seconds


# --------------------------------------------------------------------------- researchers

@dataclass
class Pool:
    """The logical GPUs a level's experiments share, and how many of its experiments are in
    flight (submitted, not yet returned to the researcher) as the driver sees them. All
    researchers are coroutines of the driver, so the count is exact at each submission."""

    gpus: int
    in_flight: int = 0
    peak_in_flight: int = 0


async def run_one_experiment(plane: Plane, pool: Pool, researcher: str, index: int, seconds: float,
                             experiment: str) -> dict:
    key = f"{researcher}/{index}"
    gpu_free = pool.in_flight < pool.gpus  # else this experiment queues for a GPU
    pool.in_flight += 1
    pool.peak_in_flight = max(pool.peak_in_flight, pool.in_flight)
    submitted = time.time()
    try:
        probs, started, ended = await gpu_experiment.remote(seconds, len(plane.ids),
                                                            zlib.crc32(key.encode()))
    finally:
        pool.in_flight -= 1
    returned = time.time()
    score = await plane.scorer.submit.remote(researcher, TESTBED, plane.ids, probs, key)
    scored = time.time()
    params = {"testbed": TESTBED, "method": "benchmark", "researcher": researcher, "index": index,
              "scaled_seconds": round(seconds, 4)}
    metrics = {k: score[k] for k in ("pgr", "transfer_acc", "weak_acc", "strong_acc")}
    tags = {"aar_kind": "experiment", "submitter": researcher, "aar_key": key}
    write_seconds = await plane.recorder.record.remote(experiment, key, params, metrics, tags, probs)
    return {"scheduling_overhead_s": (returned - submitted) - (ended - started) if gpu_free else None,
            "dispatch_s": started - submitted if gpu_free else None,
            "gpu_queue_wait_s": None if gpu_free else started - submitted,
            "scorer_latency_s": scored - returned,
            "mlflow_write_s": write_seconds, "mlflow_wait_s": time.time() - scored,
            "index": index, "span": (started, ended)}


async def researcher_loop(plane: Plane, pool: Pool, researcher: str, experiments: int, seed: int,
                          experiment: str) -> list[dict]:
    rng = np.random.default_rng(seed)
    timings = []
    for index in range(experiments):
        await asyncio.sleep(plane.workload.think_seconds(rng))
        timings.append(await run_one_experiment(plane, pool, researcher, index,
                                                plane.workload.experiment_seconds(rng), experiment))
    return timings


async def run_researchers(plane: Plane, pool: Pool, names: list[str], experiments: int,
                          experiment: str) -> list[dict]:
    loops = [researcher_loop(plane, pool, name, experiments, seed, experiment)
             for seed, name in enumerate(names)]
    return [t for timings in await asyncio.gather(*loops) for t in timings]


# --------------------------------------------------------------------------- checks

def check_books(plane: Plane, names: list[str], experiments: int, experiment: str) -> dict:
    """Budgets exact, nothing lost: audit log, remaining() and MLflow agree with what was sent."""
    from aar_ray.scoring import BudgetExhausted

    submitted = len(names) * experiments
    remaining = ray.get([plane.scorer.remaining.remote(n) for n in names])
    refused = 0
    over = np.full(len(plane.ids), 0.5)  # one submission past the budget each: refused, costs nothing
    for ref in [plane.scorer.submit.remote(name, TESTBED, plane.ids, over) for name in names]:
        try:
            ray.get(ref)
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


def most_at_once(spans) -> int:
    """The most intervals open at one time (an interval ending frees its place before one starting
    at the same instant takes it)."""
    running = peak = 0
    for _, change in sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans]):
        running += change
        peak = max(peak, running)
    return peak


def books_balance(level: dict) -> bool:
    checks = level["checks"]
    return (checks["lost_submissions"] == 0 and checks["lost_records"] == 0 and checks["remaining_exact"]
            and checks["over_budget_refused"] == checks["over_budget_audited"] == level["researchers"]
            and checks["peak_gpus_in_use"] <= level["gpus"])


# --------------------------------------------------------------------------- memory

def _smaps_kb(pid: int) -> dict:
    """Rss, Pss and private (USS) kilobytes of one process, from /proc/<pid>/smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def _is_experiment_worker(title: str) -> bool:
    return title == "ray::IDLE" or title.startswith("ray::gpu_experiment")


class MemorySampler:
    """Samples, in a thread of the driver, the memory of the driver and of every process it
    started (Ray's own processes, the scorer and recorder actors, the experiment workers), and the
    memory the machine has available. Every `every` seconds a cheap sample: the sum of their RSS
    (shared pages counted in every process, so an over-count) and the experiment workers alive.
    Every `full_every`-th sample, and at the end of each warm-up (`full_sample_now`), a full one
    from smaps_rollup: the sum of their proportional set sizes (PSS: a page shared by n processes
    counts 1/n in each, so the sum is the memory they occupy together) and a worker's private
    memory (USS). A full sample of ~150 processes takes ~0.5 s of kernel time, so it stays rare.
    Peaks are kept per phase (`phase`)."""

    def __init__(self, every: float = 2.0, full_every: int = 10):
        self.every, self.full_every, self.phase, self.peaks = every, full_every, "set-up", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()
        self.enabled = Path("/proc/self/smaps_rollup").exists()

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @staticmethod
    def _tree() -> list[tuple[psutil.Process, str]]:
        me = psutil.Process()
        procs = []
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                procs.append((proc, (proc.cmdline() or [""])[0]))
        return procs

    def sample(self, full: bool) -> dict:
        rss_kb = pss_kb = 0
        workers, worker_uss, worker_rss = 0, [], []
        for proc, title in self._tree():
            try:
                if full:
                    kb = _smaps_kb(proc.pid)
                    pss_kb += kb["pss"]
                else:
                    kb = {"rss": proc.memory_info().rss // 1024}
            except (OSError, psutil.Error):  # gone between listing and reading
                continue
            rss_kb += kb["rss"]
            if _is_experiment_worker(title):
                workers += 1
                if full:
                    worker_uss.append(kb["uss"])
                    worker_rss.append(kb["rss"])
        sample = {"rss_mb": rss_kb / 1024, "experiment_workers": workers,
                  "available_mb": psutil.virtual_memory().available / 2 ** 20}
        if full:
            sample |= {"pss_mb": pss_kb / 1024,
                       "worker_uss_mb": float(np.median(worker_uss)) / 1024 if worker_uss else None,
                       "worker_rss_mb": float(np.median(worker_rss)) / 1024 if worker_rss else None}
        return sample

    def full_sample_now(self) -> None:
        if self.enabled:
            with contextlib.suppress(Exception):
                self._record(self.sample(full=True))

    def _run(self):
        count = 0
        while not self._stop.wait(self.every):
            count += 1
            with contextlib.suppress(Exception):
                self._record(self.sample(full=count % self.full_every == 0))

    def _record(self, sample: dict) -> None:
        with self._lock:
            peak = self.peaks.setdefault(self.phase, {
                "samples": 0, "full_samples": 0, "rss_mb": 0.0, "pss_mb": 0.0, "experiment_workers": 0,
                "worker_uss_mb": None, "worker_rss_mb": None, "min_available_mb": float("inf")})
            peak["samples"] += 1
            peak["rss_mb"] = max(peak["rss_mb"], sample["rss_mb"])
            peak["experiment_workers"] = max(peak["experiment_workers"], sample["experiment_workers"])
            peak["min_available_mb"] = min(peak["min_available_mb"], sample["available_mb"])
            if "pss_mb" in sample:
                peak["full_samples"] += 1
                if sample["pss_mb"] > peak["pss_mb"]:  # a worker's figures at the PSS peak
                    peak.update({k: sample[k] for k in ("pss_mb", "worker_uss_mb", "worker_rss_mb")})

    def report(self, phase: str | None = None) -> dict | None:
        with self._lock:
            peaks = [self.peaks[phase]] if phase in self.peaks else [] if phase else list(self.peaks.values())
            if not peaks:
                return None
            top = max(peaks, key=lambda p: p["pss_mb"])
            mb = lambda v: None if v is None else round(v, 1)  # noqa: E731
            return {"samples": sum(p["samples"] for p in peaks),
                    "full_samples": sum(p["full_samples"] for p in peaks),
                    "peak_pss_mb": round(top["pss_mb"]),
                    "peak_rss_sum_mb": round(max(p["rss_mb"] for p in peaks)),
                    "peak_experiment_workers": max(p["experiment_workers"] for p in peaks),
                    "worker_uss_mb": mb(top["worker_uss_mb"]), "worker_rss_mb": mb(top["worker_rss_mb"]),
                    "machine_min_available_mb": round(min(p["min_available_mb"] for p in peaks))}


# --------------------------------------------------------------------------- levels

def run_level(plane: Plane, researchers: int, experiments: int, gpus: int, memory: MemorySampler) -> dict:
    memory.phase = f"{researchers}"
    start = time.perf_counter()
    warm_rounds = warm_workers(min(researchers, gpus))
    warm_seconds = time.perf_counter() - start
    memory.full_sample_now()  # the level's experiment workers are all up
    names = [f"bench-{plane.run_id}-{researchers}-r{i}" for i in range(researchers)]
    experiment = f"control-plane-{plane.run_id}-{researchers}"
    pool = Pool(gpus)
    start = time.perf_counter()
    timings = asyncio.run(run_researchers(plane, pool, names, experiments, experiment))
    wall = time.perf_counter() - start
    keys = [k for k in timings[0] if k not in ("index", "span")]
    figures = {key: percentiles(t[key] for t in timings if t[key] is not None) for key in keys}
    by_round = [[t for t in timings if t["index"] == i] for i in range(experiments)]
    checks = check_books(plane, names, experiments, experiment)
    checks["peak_gpus_in_use"] = most_at_once([t["span"] for t in timings])
    shared = researchers > gpus
    return {"researchers": researchers, "experiments": len(timings), "gpus": gpus,
            "gpu_policy": (f"shared pool: {gpus} GPUs for {researchers} researchers, experiments queue "
                           "for a free GPU" if shared else
                           f"{gpus} GPUs for {researchers} researchers: a GPU is free for every experiment"),
            "submitted_with_gpu_free": figures["scheduling_overhead_s"]["n"],
            "peak_experiments_in_flight": pool.peak_in_flight,
            "warm_up_rounds": warm_rounds, "warm_up_seconds": round(warm_seconds, 1),
            "wall_seconds": round(wall, 2),
            "experiments_per_second": round(len(timings) / wall, 2), **figures,
            "by_round": {  # each researcher's 1st, 2nd, ... experiment
                "submitted_with_gpu_free": [sum(t["scheduling_overhead_s"] is not None for t in r)
                                            for r in by_round],
                **{f"{key.removesuffix('_s')}_p50": [percentiles(t[key] for t in r)["p50"] for r in by_round]
                   for key in ("scorer_latency_s", "mlflow_wait_s")}},
            "checks": checks, "memory": memory.report(memory.phase)}


GROWTH_KEYS = ("scheduling_overhead_s", "scorer_latency_s", "mlflow_write_s", "mlflow_wait_s")


def growth(levels: list[dict]) -> dict:
    """Largest level's figure over the smallest level's, p50 and p99 of each timing."""
    low, high = levels[0], levels[-1]
    ratios = {}
    for key in GROWTH_KEYS:
        for stat in ("p50", "p99"):
            a, b = low[key][stat], high[key][stat]
            ratios[f"{key.removesuffix('_s')}_{stat}"] = round(b / a, 2) if a and b is not None else None
    return ratios


def growth_steps(levels: list[dict]) -> dict:
    """The same ratios from each level to the next (10 -> 100, 100 -> 1,000)."""
    return {f"{a['researchers']}_to_{b['researchers']}": growth([a, b]) for a, b in zip(levels, levels[1:])}


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
    parser.add_argument("--scale", choices=sorted(LEVELS), default="full",
                        help="full: 10, 100 and 1,000 researchers (default); small: 10 and 100")
    parser.add_argument("--levels", type=lambda s: tuple(int(x) for x in s.split(",")),
                        help="researcher counts, e.g. 10,100 (overrides --scale)")
    parser.add_argument("--experiments", type=int, default=3, help="experiments per researcher")
    parser.add_argument("--hour-seconds", type=float, default=1.0, help="how long one real hour lasts")
    parser.add_argument("--gpu-pool", type=int, default=GPU_POOL,
                        help="logical GPUs at most (default %(default)s); a level with more researchers "
                             "shares them, its experiments queue for a free GPU")
    parser.add_argument("--fresh-tasks", type=int, default=4,
                        help="no-op GPU tasks timed with a fresh worker each")
    parser.add_argument("--home", help="an aar home to import the small testbed into (default: temporary)")
    return parser.parse_args(argv)


def run_levels(home: Path, store: Path, workload: Workload, levels: list[int], experiments: int,
               gpus: int, fresh_tasks: int, memory: MemorySampler):
    local_ray(num_gpus=gpus)
    try:
        start = time.perf_counter()
        plane = start_plane(home, store, workload, budget=experiments)
        setup_seconds = time.perf_counter() - start
        fresh = fresh_worker_task_seconds(fresh_tasks)
        return setup_seconds, fresh, [run_level(plane, n, experiments, gpus, memory) for n in levels]
    finally:
        ray.shutdown()


def main(argv=None) -> dict:
    args = parse_args(argv)
    levels = sorted(args.levels or LEVELS[args.scale])
    gpus = min(max(levels), args.gpu_pool)
    workload = Workload(hour_seconds=args.hour_seconds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, MemorySampler() as memory:
        home = Path(args.home) if args.home else Path(tmp) / "home"
        with ray_output_to_stderr():
            setup_seconds, fresh, results = run_levels(home, Path(tmp), workload, levels, args.experiments,
                                                       gpus, args.fresh_tasks, memory)
    report = {
        "benchmark": "control_plane", "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "memory_total_mb": round(psutil.virtual_memory().total / 2 ** 20),
        "levels": levels, "experiments_per_researcher": args.experiments, "gpus": gpus,
        "gpu_policy": {str(r["researchers"]): r["gpu_policy"] for r in results},
        "workload": workload.describe(),
        "setup_seconds": round(setup_seconds, 2), "total_seconds": round(time.perf_counter() - start, 1),
        "fresh_worker_task_seconds": percentiles(fresh),
        "per_level": results, f"growth_{levels[0]}_to_{levels[-1]}": growth(results),
        "growth_steps": growth_steps(results),
        "implied_real_time_capacity": implied_real_time_capacity(results, workload),
        "memory": memory.report(),
        "all_checks_pass": all(books_balance(r) for r in results),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
