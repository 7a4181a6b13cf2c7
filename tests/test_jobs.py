"""`ray job submit` path: a real head node started with `ray start`, a job submitted through
Ray's job API with the repo's runtime env, its runs landing in MLflow."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # raises on unknown fields or bad values
    assert ".aar" in env["excludes"] and ".venv" in env["excludes"]


@pytest.fixture()
def head_node():
    # the node's `python` is the one with aar_ray installed, as on a cluster built from clusters/
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
    dashboard = str(_free_port())
    # every port its own, so another Ray on this machine (a developer's, a test's) cannot clash
    ports = [f"--{name}={_free_port()}" for name in (
        "port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    subprocess.run([RAY, "start", "--head", f"--dashboard-port={dashboard}", *ports, "--num-cpus", "2",
                    "--temp-dir", temp_dir, "--disable-usage-stats"], check=True, env=env,
                   capture_output=True, timeout=120)
    yield f"http://127.0.0.1:{dashboard}"
    _stop_cluster(temp_dir)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir):
    """Only this cluster's processes (`ray stop` would stop every cluster on the machine)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in proc.info["cmdline"] or []):
            proc.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_baseline_job_runs_on_a_cluster_through_ray_job_submit(head_node, small_home, tmp_path):
    """Exactly what a user types, with Ray 2.60's token auth (the client needs RAY_AUTH_MODE)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    deadline = time.time() + 120
    while True:  # a fresh head's job agent takes a few seconds to come up
        proc = _submit(head_node, small_home, tmp_path, env)
        if "No available agent" not in proc.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0 and "succeeded" in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "zero_shot_prior" in proc.stdout  # the job's own output: the leaderboard
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["aar-baselines"], filter_string="tags.aar_kind = 'experiment'")
    assert len(runs) == 2


def _submit(head_node, small_home, tmp_path, env):
    return subprocess.run(
        [RAY, "job", "submit", "--address", head_node, "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"),
         "--working-dir", str(REPO), "--", "python", "jobs/baseline.py", "--testbed", "tax-small",
         "--method", "zero_shot_prior", "--seeds", "1-2", "--home", str(small_home),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "scorer.baseline_seeds=2"],
        env=env, capture_output=True, text=True, timeout=600)
