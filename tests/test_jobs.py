"""`ray job submit`, as the README says to do it: a real head started with `ray start --head
--block` from the project's venv (its `python` is the job's), the README's one submit command
from the checkout, and the head stopped by its pid without touching any other Ray on the machine.

The head's nodes export AAR_HOME, as the cluster files do; jobs pass no --home and no
--tracking-uri, so everything they keep lands in that home, where `aar` run from any other
directory finds it, and a campaign started by one job is resumed by the next."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# the README's submit command, up to the entrypoint's own options
SUBMIT = ["ray", "job", "submit", "--address", "{address}", "--runtime-env", "jobs/runtime_env.yaml", "--"]
# what a home accumulates; the jobs' home starts from small_home's testbeds and caches only
STATE = ("mlflow.db", "mlartifacts", "forum.db", "campaigns", "tracking-spool", "audit.jsonl")
SMALL_CAMPAIGN = ["testbed=tax-small", "heldout_testbeds=[pref-small]", "researchers=2",
                  "researcher_limits.max_experiments=3", "generalisation.top_k=2",
                  "generalisation.seeds=[1,2]", "scorer.baseline_seeds=2"]


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # raises on unknown fields or bad values
    assert {".aar", ".venv", "mlflow.db", "mlartifacts"} <= set(env["excludes"])


def test_one_submit_command_everywhere():
    """README, clusters/README.md, `aar --help` and the jobs' docstrings give the same command,
    and no other form of it."""
    from aar_ray.cli import DESCRIPTION

    command = ("RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 "
               "--runtime-env jobs/runtime_env.yaml -- python jobs/")
    texts = {"README.md": (REPO / "README.md").read_text(),
             "clusters/README.md": (REPO / "clusters" / "README.md").read_text(),
             "aar --help": DESCRIPTION,
             **{f"jobs/{p.name}": p.read_text() for p in (REPO / "jobs").glob("*.py")}}
    for where, text in texts.items():
        flat = " ".join(text.replace("\\\n", " ").split())
        assert flat.count(command) >= 1 and flat.count(command) == flat.count("ray job submit --"), where


class Head:
    def __init__(self, address: str, home: Path, temp_dir: str, ports: list[int], proc):
        self.address, self.home, self.temp_dir, self.ports, self.proc = address, home, temp_dir, ports, proc


@pytest.fixture(scope="module")
def head(small_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("cluster") / "shared-aar-home"
    shutil.copytree(small_home, home, ignore=shutil.ignore_patterns(*STATE))
    venv = Path(sys.executable).parent
    # `source .venv/bin/activate` before `ray start`, and the node's AAR_HOME as clusters/ set it
    env = {**os.environ, "PATH": f"{venv}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv.parent),
           "AAR_HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE"):
        env.pop(name, None)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
    dashboard = _free_port()
    # every port its own, so another Ray on this machine (a developer's, a test's) cannot clash
    names = ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")
    ports = {name: _free_port() for name in names}
    log = open(f"{temp_dir}.log", "w")
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--temp-dir", temp_dir, f"--dashboard-port={dashboard}",
         *(f"--{n}={p}" for n, p in ports.items()), "--num-cpus", "2", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 180
    while subprocess.run([RAY, "job", "list", "--address", address], env=_client_env(), capture_output=True,
                         timeout=120).returncode != 0:  # the README's `until ... ray job list` loop
        if proc.poll() is not None or time.time() > deadline:
            _stop_head(proc, temp_dir, [dashboard, *ports.values()])
            pytest.fail(f"the head did not come up; see {temp_dir}.log")
        time.sleep(2)
    yield Head(address, home, temp_dir, [dashboard, *ports.values()], proc)
    _stop_head(proc, temp_dir, [dashboard, *ports.values()])
    log.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(proc, temp_dir, ports):
    """The README's way: `kill $RAY_HEAD_PID` (SIGTERM to `ray start --block`). It must leave no
    process of this head behind (`ray stop` would stop every Ray of the user on the machine)."""
    import psutil

    proc.terminate()
    proc.wait(timeout=120)
    deadline = time.time() + 30
    while (left := _processes_of(temp_dir, ports)) and time.time() < deadline:
        time.sleep(0.5)
    for p in left:  # clean up before failing, so no test leaves a head running
        p.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, [" ".join(p.cmdline())[:200] for p in left]


def _processes_of(temp_dir, ports):
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []) or any(
                    c.laddr.port in ports for c in p.net_connections() if c.status == psutil.CONN_LISTEN):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _client_env():
    """The submitting shell: token auth for the job client, as the README says; nothing else."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    for name in ("RAY_ADDRESS", "AAR_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env


def _ray_job(head, *args, timeout=900):
    """`ray job submit|stop|...` from the checkout; a fresh head's job agent needs a few seconds."""
    command = [RAY, *[a.format(address=head.address) for a in args]]
    deadline = time.time() + 120
    while True:
        proc = subprocess.run(command, cwd=REPO, env=_client_env(), capture_output=True, text=True,
                              timeout=timeout)
        if "No available agent" not in proc.stderr or time.time() > deadline:
            return proc
        time.sleep(2)


def _submit(head, *entrypoint, no_wait=False):
    submit = [a for a in SUBMIT[1:]]
    if no_wait:
        submit.insert(2, "--no-wait")
    return _ray_job(head, *submit, "python", *entrypoint)


def _submission_id(proc) -> str:
    for word in (proc.stdout + proc.stderr).replace("'", " ").split():
        if word.startswith("raysubmit_"):
            return word
    raise AssertionError(proc.stdout + proc.stderr)


def _wait_job(head, job_id, timeout=900) -> str:
    """SUCCEEDED, FAILED or STOPPED, as `ray job status` says it."""
    said = {"' succeeded": "SUCCEEDED", "' failed": "FAILED", "' was stopped": "STOPPED"}
    deadline = time.time() + timeout
    while time.time() < deadline:
        proc = _ray_job(head, "job", "status", "--address", "{address}", job_id, timeout=120)
        for words, status in said.items():
            if f"{job_id}{words}" in proc.stdout + proc.stderr:
                return status
        time.sleep(3)
    raise AssertionError(f"job {job_id} did not end")


def _aar(*args, home, cwd):
    """`aar` as a person types it on the head, in some other directory, with the nodes' AAR_HOME."""
    env = {**os.environ, "AAR_HOME": str(home)}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "aar_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _working_dirs(head):
    return list(Path(head.temp_dir).glob("session_*/runtime_resources/working_dir_files/*"))


def test_a_job_keeps_its_results_in_the_home_where_aar_finds_them_from_anywhere(head, tmp_path):
    proc = _submit(head, "jobs/baseline.py", "--testbed", "tax-small", "--method", "zero_shot_prior",
                   "--seeds", "1-2", "scorer.baseline_seeds=2")
    assert proc.returncode == 0 and "succeeded" in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "zero_shot_prior" in proc.stdout  # the job's own output: the leaderboard
    # nothing in the job's working directory, Ray's temporary copy of the checkout
    packages = _working_dirs(head)
    assert packages and not any((p / name).exists() for p in packages for name in (*STATE, ".aar"))
    mlflow.set_tracking_uri(f"sqlite:///{head.home / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["aar-baselines"], filter_string="tags.aar_kind = 'experiment'")
    assert len(runs) == 2 and all(uri.startswith((head.home / "mlartifacts").as_uri()) for uri in runs["artifact_uri"])
    board = _aar("leaderboard", home=head.home, cwd=tmp_path)  # another directory, another process
    assert board.returncode == 0 and "tax-small" in board.stdout and "zero_shot_prior" in board.stdout


def test_a_relative_home_in_a_job_is_refused_naming_the_key(head):
    proc = _submit(head, "jobs/baseline.py", "--testbed", "tax-small", "--seeds", "1", "--home", ".aar")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "failed" in out, out[-3000:]
    assert "home='.aar' is relative, and this process runs inside a Ray job" in out
    assert "Traceback" not in out  # refused at the entry point, before any work


def test_a_campaign_started_by_one_job_is_resumed_by_another(head, tmp_path):
    name = "jobcamp"
    campaign = ["jobs/campaign.py", "--config", "conf/campaign/laptop.yaml", f"name={name}", *SMALL_CAMPAIGN]
    first = _submission_id(_submit(head, *campaign, no_wait=True))
    lock = head.home / "campaigns" / name / "lock.json"
    deadline = time.time() + 600
    while not lock.exists():
        assert time.time() < deadline, "the first job never took the campaign's lock"
        time.sleep(1)

    # a second driver, anywhere on the cluster, is refused before any set-up
    second = _submit(head, *campaign, "--resume")
    out = second.stdout + second.stderr
    assert second.returncode != 0 and f"campaign '{name}' is running" in out, out[-3000:]
    assert "preparing testbeds" not in out

    forum = head.home / "forum.db"
    deadline = time.time() + 900
    while not (forum.exists() and len(_results(forum, name)) > 0):
        assert time.time() < deadline, "no result from the first job"
        time.sleep(2)
    stopped = _ray_job(head, "job", "stop", "--address", "{address}", first, timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert _wait_job(head, first) == "STOPPED"
    # `ray job stop` sends SIGTERM: the driver ends like on Ctrl-C, in one line, well within the
    # seconds Ray waits before SIGKILL (RAY_JOB_STOP_WAIT_TIME_S, 3 s by default)
    logs = _ray_job(head, "job", "logs", "--address", "{address}", first, timeout=120).stdout
    assert f"aar campaign: campaign '{name}' interrupted;" in logs and "Traceback" not in logs, logs[-3000:]
    assert not lock.exists()

    resumed = _submit(head, *campaign, "--resume")
    assert resumed.returncode == 0 and "succeeded" in resumed.stdout + resumed.stderr, resumed.stdout[-3000:]
    results = _results(forum, name)
    assert len(results) == len(set(results["call_key"])) == 2 * 3  # every experiment exactly once
    status = _aar("campaign", "status", "--name", name, home=head.home, cwd=tmp_path)
    rows = [line for line in status.stdout.splitlines() if line.startswith("{")]
    assert status.returncode == 0 and len(rows) == 2 and all('"stopped": "finished' in r for r in rows), status.stdout
    report = _aar("report", name, home=head.home, cwd=tmp_path)
    assert report.returncode == 0 and "## Generalisation" in report.stdout
    mlflow.set_tracking_uri(f"sqlite:///{head.home / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[f"campaign-{name}"])
    assert "RUNNING" not in set(runs["status"]) and not lock.exists()


def _results(db, campaign):
    import sqlite3

    with sqlite3.connect(db) as conn:
        try:
            return pd.read_sql("select * from results where campaign = ?", conn, params=(campaign,))
        except pd.errors.DatabaseError:  # the table is not made yet
            return pd.DataFrame()
