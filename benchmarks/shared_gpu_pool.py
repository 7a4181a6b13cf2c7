"""Shared GPU pool vs one GPU per researcher: the same researchers, the same workload, the same wall
time, Ray's own scheduler placing the experiments. One JSON line of figures and ratios.

    .venv/bin/python benchmarks/shared_gpu_pool.py                 # 30 researchers, 60 s per policy
    .venv/bin/python benchmarks/shared_gpu_pool.py --scale full    # 99 researchers, 300 s per policy
    .venv/bin/python benchmarks/shared_gpu_pool.py --researchers 3 --seconds 5 --hour-seconds 0.25

Policies, each on its own local Ray with logical GPUs:
  - dedicated: one GPU per researcher, as the study's sandbox gives each agent its own GPU pod.
    Ray has one GPU per researcher and a custom resource `gpu_r<i>` per researcher; researcher i's
    experiments ask for `num_gpus=1` and `gpu_r<i>`, so they run on its GPU only, and that GPU
    idles while the researcher thinks.
  - shared: a pool of `--gpus` GPUs (researchers / 3 by default); experiments from every
    researcher ask for `num_gpus=1` and queue on the pool, a GPU is held only while a task runs
    (what an experiment task asking Ray for `experiment_gpus` does).
Each researcher (an asyncio loop in the driver) thinks, runs one experiment (a Ray task that
holds a GPU for the scaled experiment time) and waits for it, over and over until the window of
`--seconds` ends; it draws the same think and experiment times under both policies (same seed).
Experiments in flight at the end run to completion, but only GPU time inside the window counts.

Measured from each task's own start and end timestamps:
  - GPU utilisation: busy GPU time inside the window / (GPUs x window);
  - experiments per GPU-hour: experiments finished inside the window / (GPUs x window hours);
  - implied GPU dollars per agent-hour: GPUs x price / researchers (GPUs are rented for the whole
    window, busy or not), and dollars per experiment;
  - what sharing costs the researchers: hours an experiment waits for a GPU, experiments per
    researcher-hour;
  - peak GPUs in use, which must not exceed the pool (the scheduler honoured it).
The headline is `ratios.experiments_per_gpu_hour` (shared / dedicated). Its ceiling is
1 / dedicated utilisation (a pool that never idles), reported as `ratio_ceiling`; so sharing
doubles experiments per GPU-hour only where dedicated GPUs idle more than half the time, i.e.
where researchers think longer than their experiments run. `expected_without_queueing` gives the
dedicated utilisation and the GPUs kept busy on average that the workload implies by itself; a
pool smaller than the latter is saturated and its researchers wait.

Workload, in real time, scaled so that one hour lasts `--hour-seconds` (control_plane.Workload):
  - experiment time: uniform on 2,870-6,350 s, the GPU time of one vanilla_w2s run in the
    study's released sandbox (one H200-class GPU; /work/shared/REFERENCE.md). One experiment is
    one run (one seed).
  - think time between experiments: lognormal, median 45 min, sigma 1.0 (mean 74 min). An
    assumption: the study reports no think-time distribution.
  - GPU price: $2.50 per H100-hour, an assumption (a typical on-demand cloud rate).
Experiment tasks reuse their worker processes (see control_plane.py): at real time a fresh
worker per task costs under 0.1% of a run, at scaled time it would cost an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_plane import (Workload, gpu_experiment, local_ray, most_at_once, percentiles,  # noqa: E402
                           ray_output_to_stderr, warm_workers)

SCALES = {"default": {"researchers": 30, "seconds": 60.0}, "full": {"researchers": 99, "seconds": 300.0}}
GPU_PRICE_PER_HOUR = 2.50  # assumption: on-demand H100


# --------------------------------------------------------------------------- researchers

async def researcher_loop(index: int, task, workload: Workload, deadline: float, seed: int) -> list[tuple]:
    """Think, run one experiment and wait for it, until the deadline. Returns
    (submitted, started, ended) wall-clock times of each experiment."""
    rng = np.random.default_rng(seed)
    spans = []
    while True:
        think, seconds = workload.think_seconds(rng), workload.experiment_seconds(rng)
        await asyncio.sleep(min(think, max(0.0, deadline - time.time())))
        if time.time() >= deadline:
            return spans
        submitted = time.time()
        _, started, ended = await task.remote(seconds)
        spans.append((submitted, started, ended))


def experiment_task(policy: str, index: int):
    if policy == "dedicated":  # researcher i's GPU and no other
        return gpu_experiment.options(num_gpus=1, resources={f"gpu_r{index}": 1})
    return gpu_experiment.options(num_gpus=1)  # any free GPU of the pool


async def run_researchers(policy: str, researchers: int, workload: Workload, seconds: float,
                          seed: int) -> tuple[float, float, list[tuple]]:
    start = time.time()
    deadline = start + seconds
    loops = [researcher_loop(i, experiment_task(policy, i), workload, deadline, seed + i)
             for i in range(researchers)]
    spans = [span for spans in await asyncio.gather(*loops) for span in spans]
    return start, deadline, spans


# --------------------------------------------------------------------------- figures

def summarise(spans: list[tuple], start: float, deadline: float, gpus: int, researchers: int,
              workload: Workload, price: float) -> dict:
    hour = workload.hour_seconds
    window_hours = (deadline - start) / hour
    busy_hours = sum(max(0.0, min(e, deadline) - max(s, start)) for _, s, e in spans) / hour
    finished = sum(e <= deadline for _, _, e in spans)
    gpu_hours = gpus * window_hours
    return {
        "gpus": gpus, "researchers": researchers, "window_hours": round(window_hours, 2),
        "experiments_finished": finished,
        "gpu_utilisation": round(busy_hours / gpu_hours, 4),
        "experiments_per_gpu_hour": round(finished / gpu_hours, 4),
        "experiments_per_researcher_hour": round(finished / (researchers * window_hours), 4),
        "gpu_wait_hours": percentiles((s - sub) / hour for sub, s, _ in spans),
        "dollars_per_agent_hour": round(gpus * price / researchers, 3),
        "dollars_per_experiment": round(gpu_hours * price / finished, 2) if finished else None,
        "peak_gpus_in_use": most_at_once([(s, e) for _, s, e in spans]),
    }


def run_policy(policy: str, researchers: int, gpus: int, workload: Workload, seconds: float,
               seed: int, price: float) -> dict:
    resources = {f"gpu_r{i}": 1 for i in range(researchers)} if policy == "dedicated" else None
    with ray_output_to_stderr():
        local_ray(num_gpus=gpus, resources=resources)
        try:
            warm_workers(gpus)
            start, deadline, spans = asyncio.run(run_researchers(policy, researchers, workload, seconds, seed))
        finally:
            ray.shutdown()
    return {"policy": policy, **summarise(spans, start, deadline, gpus, researchers, workload, price)}


def expected_load(workload: Workload, researchers: int) -> dict:
    """What the workload implies without any scheduler: a dedicated GPU is busy for the share of
    a researcher's cycle spent in experiments, and the researchers keep that many GPUs busy."""
    busy_share = workload.mean_experiment_real_seconds() / workload.mean_cycle_real_seconds()
    return {"dedicated_utilisation": round(busy_share, 4),
            "gpus_busy_on_average": round(researchers * busy_share, 1)}


def ratios(dedicated: dict, shared: dict) -> dict:
    keys = ("experiments_per_gpu_hour", "gpu_utilisation", "dollars_per_agent_hour",
            "dollars_per_experiment", "experiments_per_researcher_hour", "experiments_finished")
    return {k: round(shared[k] / dedicated[k], 3) if dedicated[k] and shared[k] is not None else None
            for k in keys} | {"gpus": round(shared["gpus"] / dedicated["gpus"], 3)}


# --------------------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.add_argument("--researchers", type=int, help="researchers (both policies)")
    parser.add_argument("--gpus", type=int, help="GPUs in the shared pool (default researchers / 3)")
    parser.add_argument("--seconds", type=float, help="wall seconds each policy runs")
    parser.add_argument("--hour-seconds", type=float, default=1.0, help="how long one real hour lasts")
    parser.add_argument("--think-median-min", type=float, default=45.0, help="assumed think-time median")
    parser.add_argument("--think-sigma", type=float, default=1.0, help="assumed think-time lognormal sigma")
    parser.add_argument("--gpu-price", type=float, default=GPU_PRICE_PER_HOUR, help="assumed $ per GPU-hour")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.researchers = args.researchers or SCALES[args.scale]["researchers"]
    args.seconds = args.seconds or SCALES[args.scale]["seconds"]
    args.gpus = args.gpus or max(1, round(args.researchers / 3))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    workload = Workload(hour_seconds=args.hour_seconds, think_median_s=args.think_median_min * 60,
                        think_sigma=args.think_sigma)
    common = dict(researchers=args.researchers, workload=workload, seconds=args.seconds,
                  seed=args.seed, price=args.gpu_price)
    dedicated = run_policy("dedicated", gpus=args.researchers, **common)
    shared = run_policy("shared", gpus=args.gpus, **common)
    report = {
        "benchmark": "shared_gpu_pool", "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "researchers": args.researchers, "seconds_per_policy": args.seconds,
        "workload": workload.describe(), "gpu_price_per_hour": f"{args.gpu_price} (assumption)",
        "expected_without_queueing": expected_load(workload, args.researchers),
        "dedicated": dedicated, "shared": shared, "ratios": ratios(dedicated, shared),
        "ratio_ceiling": round(1 / dedicated["gpu_utilisation"], 3) if dedicated["gpu_utilisation"] else None,
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
