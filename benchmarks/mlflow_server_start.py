"""Seconds from `mlflow ui` to its first answer, with and without MLflow's GenAI job runner and
with 1 or 4 server workers, measured side by side in one run. Prints one JSON line.

`aar ui` starts `mlflow ui --workers 1` with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
(`aar_ray.environment.PROCESS_DEFAULTS`); MLflow's own defaults are 4 workers and the job runner,
a job-runner process and 7 huey consumers that each import MLflow.

    .venv/bin/python benchmarks/mlflow_server_start.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import requests

from aar_ray.forum.postgres import free_port


def first_answer(workers: int, job_runner: bool, timeout: float = 600) -> tuple[float, int]:
    """Seconds until the server answers a store query, and the processes it runs by then; an error
    if it exits or has not answered within `timeout` seconds."""
    port, store = free_port(), tempfile.mkdtemp(prefix="aar-mlflow-start-")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(job_runner).lower()}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}/m.db",
                               "--port", str(port), "--workers", str(workers)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
    try:
        while True:
            if server.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError(f"mlflow ui --workers {workers} (job runner {job_runner}) did not answer")
            try:
                if requests.get(url, params={"experiment_name": "Default"}, timeout=300).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        seconds = time.perf_counter() - started
        processes = subprocess.run(["ps", "-o", "pid=", "-g", str(server.pid)], capture_output=True,
                                   text=True).stdout.split()
        return round(seconds, 1), len(processes)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="starts of each variant, interleaved")
    args = parser.parse_args()
    variants = {f"workers{w}_{'jobs' if jobs else 'nojobs'}": (w, jobs) for w in (4, 1) for jobs in (True, False)}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    processes: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so load from elsewhere falls on every variant alike
        for name, (workers, jobs) in variants.items():
            took, processes[name] = first_answer(workers, jobs)
            seconds[name].append(took)
    median = {name: round(statistics.median(values), 1) for name, values in seconds.items()}
    print(json.dumps({"cores": os.cpu_count(), "seconds": seconds, "median_seconds": median, "processes": processes,
                      "mlflow_default_over_aar_ui": round(median["workers4_jobs"] / median["workers1_nojobs"], 2)}))


if __name__ == "__main__":
    main()
