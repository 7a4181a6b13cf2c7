"""CPU testbed sweep benchmark: one JSON line of timings measured side by side in one run.

    .venv/bin/python benchmarks/cpu_testbed.py [--testbed taxonomy] [--seeds 1-3] [--home DIR]

Measures, on the same specs (every library method x seeds on one testbed):
  - seconds per method per seed, each run alone in this process (one torch thread);
  - the same runs one after another (serial seconds);
  - the same runs as Ray tasks on a local Ray with all cores (ray seconds) -> speed-up;
  - the whole `run_sweep` (tasks + scorer + MLflow records) into a temporary store.
Shared preparation (testbed, sentence vectors, weak labels, scorer baselines) is done first and
timed separately, since every sweep after the first reuses it from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ray
import torch

from aar_ray.cli import parse_seeds
from aar_ray.config import BaselineConfig, load_config
from aar_ray.experiments import run_method
from aar_ray.experiments.sweep import connect_ray, experiment_specs, prepare, run_method_task, run_sweep
from aar_ray.scoring import scorer_actor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", default="taxonomy")
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("1-3"))
    parser.add_argument("--home", default=".aar")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as store:
        config = load_config(BaselineConfig, None, [
            f"home={args.home}", f"testbeds=[{args.testbed}]",
            f"seeds=[{','.join(map(str, args.seeds))}]", f"tracking.uri=sqlite:///{store}/mlflow.db",
            "submitter=benchmark", "scorer.queries_per_analyst=100000"])
        connect_ray()
        start = time.perf_counter()
        prepare(config, scorer_actor(config.home, config.scorer, config.teacher, config.student), progress=False)
        prepare_seconds = time.perf_counter() - start
        specs = experiment_specs(config)

        torch.set_num_threads(1)  # the same single thread each Ray task gets
        per_run: dict[str, list[float]] = {}
        start = time.perf_counter()
        for spec in specs:
            per_run.setdefault(spec.label, []).append(round(run_method(spec).wall_seconds, 3))
        serial_seconds = time.perf_counter() - start

        start = time.perf_counter()
        ray.get([run_method_task.remote(spec) for spec in specs])
        ray_seconds = time.perf_counter() - start

        start = time.perf_counter()
        run_sweep(replace(config), progress=False)
        sweep_seconds = time.perf_counter() - start

    print(json.dumps({
        "benchmark": "cpu_testbed", "testbed": args.testbed, "seeds": args.seeds, "runs": len(specs),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "ray_cpus": ray.cluster_resources().get("CPU"),
        "prepare_seconds": round(prepare_seconds, 2),
        "seconds_per_method_per_seed": per_run,
        "serial_seconds": round(serial_seconds, 2), "ray_seconds": round(ray_seconds, 2),
        "ray_speedup": round(serial_seconds / ray_seconds, 2),
        "sweep_seconds_with_scoring_and_mlflow": round(sweep_seconds, 2),
        "mlflow_and_scoring_overhead_per_run": round((sweep_seconds - ray_seconds) / len(specs), 3),
    }))


if __name__ == "__main__":
    main()
