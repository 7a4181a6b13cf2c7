"""`ray job submit` on a real multi-node Ray cluster on this machine, driven as the README says:
`clusters/one_host.sh up` starts a head with no CPUs (so experiments must run on workers) and
two one-CPU worker nodes, each a separate `ray start` process with its own ports and scratch
folder, from the project's venv; jobs are submitted with the README's one command from a copy
of the checkout; `clusters/one_host.sh down` stops exactly these nodes.

The nodes export AAR_HOME, as the cluster files do (here every node sees the same local folder,
as nodes see one NFS mount); jobs pass no --home and no --tracking-uri, so everything they keep
lands in that home, where `aar` run from any other directory finds it, and a campaign started by
one job is resumed by the next, even after the checkout changed and a worker node died."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
import yaml
from ports import free_port, wait_until_healthy

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
WORKERS = 2
ENDED = {"SUCCEEDED", "FAILED", "STOPPED"}  # a job's final states


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


class Cluster:
    def __init__(self, address: str, home: Path, folder: Path, checkout: Path):
        self.address, self.home, self.folder, self.checkout = address, home, folder, checkout

    def nodes(self) -> list[dict]:
        listed = _ray_job(self, "list", "nodes", "--address", "{address}", "--format", "json", timeout=120)
        return json.loads(listed.stdout)

    def package_folders(self) -> list[Path]:
        """Ray's unpacked copies of the submitted checkout, on every node."""
        return list(self.folder.glob("*/session_*/runtime_resources/working_dir_files/*"))


@pytest.fixture(scope="module")
def cluster(small_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("cluster") / "shared-aar-home"
    shutil.copytree(small_home, home, ignore=shutil.ignore_patterns(*STATE))
    folder = Path(tempfile.mkdtemp(prefix="rayc", dir="/tmp"))  # short: Ray's socket paths must fit
    checkout = _copy_of_checkout(tmp_path_factory.mktemp("checkout"))
    venv = Path(sys.executable).parent
    # `source .venv/bin/activate` and the nodes' AAR_HOME, as the README's recipe does
    env = {**os.environ, "PATH": f"{venv}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv.parent),
           "AAR_HOME": str(home)}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)
    env["AAR_DASHBOARD_PORT"] = str(free_port())  # 8265 may be a developer's own head
    up = subprocess.run(["clusters/one_host.sh", "up", str(folder), str(WORKERS)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        yield Cluster(up.stdout.split("dashboard ")[-1].strip(), home, folder, checkout)
    finally:
        _stop(folder, env)



def _copy_of_checkout(dest: Path) -> Path:
    """The checkout's files as `git` sees them (tracked and new, not ignored): a user's tree."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():  # aar_ray/conf -> ../conf: a link, as in the checkout
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    return dest


def _stop(folder: Path, env: dict):
    """The README's way, `clusters/one_host.sh down`: it must leave no process of these nodes
    behind (`ray stop` would stop every Ray of the user on the machine)."""
    subprocess.run(["clusters/one_host.sh", "down", str(folder)], cwd=REPO, env=env, timeout=300)
    deadline = time.time() + 30
    while (left := _processes_of(folder)) and time.time() < deadline:
        time.sleep(0.5)
    for p in left:  # clean up before failing, so no test leaves a node running
        p.kill()
    shutil.rmtree(folder, ignore_errors=True)
    assert not left, [" ".join(p.cmdline())[:200] for p in left]


def _processes_of(folder: Path):
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(folder) in part for part in p.info["cmdline"] or []):
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


def _ray_job(cluster, *args, timeout=900):
    """`ray job submit|stop|...` (or another `ray` command) from the copy of the checkout; a
    fresh head's job agent needs a few seconds."""
    command = [RAY, *[a.format(address=cluster.address) for a in args]]
    deadline = time.time() + 120
    while True:
        proc = subprocess.run(command, cwd=cluster.checkout, env=_client_env(), capture_output=True, text=True,
                              timeout=timeout)
        if "No available agent" not in proc.stderr or time.time() > deadline:
            return proc
        time.sleep(2)


def _job_logs(cluster, job_id: str, chars: int = 6000) -> str:
    """The end of a job's own output, without the raylets' lines that Ray streams into it."""
    logs = _ray_job(cluster, "job", "logs", "--address", "{address}", job_id).stdout
    return "\n".join(line for line in logs.splitlines() if "(raylet)" not in line)[-chars:]


def _submit(cluster, *entrypoint, no_wait=False):
    submit = [a for a in SUBMIT[1:]]
    if no_wait:
        submit.insert(2, "--no-wait")
    return _ray_job(cluster, *submit, "python", *entrypoint)


def _submission_id(proc) -> str:
    for word in (proc.stdout + proc.stderr).replace("'", " ").split():
        if word.startswith("raysubmit_"):
            return word
    raise AssertionError(proc.stdout + proc.stderr)


def _job_status(cluster, job_id: str) -> str | None:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, from the head's REST API (which `ray job
    status` calls), from this process: polling through that command would start an interpreter
    that imports Ray every few seconds, on the cores the jobs under test need. None while the head
    cannot say (its job agent starts a few seconds after it)."""
    import requests

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()  # clusters/one_host.sh made it
    try:
        response = requests.get(f"{cluster.address}/api/jobs/{job_id}", timeout=60,
                                headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        return response.json()["status"]
    except (requests.RequestException, ValueError):
        return None


def _wait_job(cluster, job_id, timeout=900) -> str:
    """SUCCEEDED, FAILED or STOPPED."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (status := _job_status(cluster, job_id)) in ENDED:
            return status
        time.sleep(2)
    raise AssertionError(f"job {job_id} did not end")


def _aar(*args, home, cwd):
    """`aar` as a person types it on the head, in some other directory, with the nodes' AAR_HOME."""
    env = {**os.environ, "AAR_HOME": str(home)}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "aar_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _experiment_runs(home: Path, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], filter_string="tags.aar_kind = 'experiment'")


def _assert_only_in_the_home(cluster):
    """Nothing in the jobs' working directories, Ray's temporary copies of the checkout on each
    node, is the only copy of anything: they hold no state at all."""
    packages = cluster.package_folders()
    assert packages and not [p / name for p in packages for name in (*STATE, ".aar") if (p / name).exists()]


def test_a_job_keeps_its_results_in_the_home_where_aar_finds_them_from_anywhere(cluster, tmp_path):
    proc = _submit(cluster, "jobs/baseline.py", "--testbed", "tax-small", "--method", "zero_shot_prior",
                   "--seeds", "1-2", "scorer.baseline_seeds=2")
    assert proc.returncode == 0 and "succeeded" in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "zero_shot_prior" in proc.stdout  # the job's own output: the leaderboard
    _assert_only_in_the_home(cluster)
    runs = _experiment_runs(cluster.home, "aar-baselines")
    assert len(runs) == 2 and all(uri.startswith((cluster.home / "mlartifacts").as_uri()) for uri in runs["artifact_uri"])
    workers = {n["node_id"] for n in cluster.nodes() if not n["is_head_node"]}
    assert len(workers) == WORKERS and set(runs["tags.ray_node_id"]) <= workers  # the head has no CPU for them
    board = _aar("leaderboard", home=cluster.home, cwd=tmp_path)  # another directory, another process
    assert board.returncode == 0 and "tax-small" in board.stdout and "zero_shot_prior" in board.stdout
    assert sorted(_pgr_in_aar_ui(cluster.home, tmp_path, "aar-baselines")) == sorted(runs["metrics.pgr"])


def _pgr_in_aar_ui(home: Path, cwd: Path, experiment: str, timeout: float = 600) -> list[float]:
    """The experiment runs' PGR as `aar ui`, started in another directory, serves them."""
    import requests

    port = free_port()
    env = {**os.environ, "AAR_HOME": str(home)}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    ui = subprocess.Popen([sys.executable, "-m", "aar_ray.cli", "ui", "--port", str(port)], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        assert wait_until_healthy(f"http://127.0.0.1:{port}/health", ui, timeout), "aar ui did not serve"
        # a busy machine's first store query can take tens of seconds: a slow answer is not a wrong one
        found = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": experiment}, timeout=300)
        search = requests.post(f"{api}/runs/search", timeout=300, json={
            "experiment_ids": [found.json()["experiment"]["experiment_id"]],
            "filter": "tags.aar_kind = 'experiment'"}).json()
        return [m["value"] for run in search["runs"] for m in run["data"]["metrics"] if m["key"] == "pgr"]
    finally:  # SIGKILL: how `aar ui` stops is not this test's subject, and a busy one stops slowly
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()


def test_a_relative_home_in_a_job_is_refused_naming_the_key(cluster):
    proc = _submit(cluster, "jobs/baseline.py", "--testbed", "tax-small", "--seeds", "1", "--home", ".aar")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "failed" in out, out[-3000:]
    assert "home='.aar' is relative, and this process runs inside a Ray job" in out
    assert "Traceback" not in out  # refused at the entry point, before any work


def test_a_campaign_survives_a_stopped_job_an_edited_checkout_and_a_dead_worker_node(cluster, tmp_path):
    name = "jobcamp"
    campaign = ["jobs/campaign.py", "--config", "conf/campaign/laptop.yaml", f"name={name}", *SMALL_CAMPAIGN]
    first = _submission_id(_submit(cluster, *campaign, no_wait=True))
    lock = cluster.home / "campaigns" / name / "lock.json"
    _wait_for(lambda: lock.exists(), 600, "the first job never took the campaign's lock")

    # one researcher paused from the start (the control file in the shared home, as `aar campaign
    # pause --researcher` writes it), so the first job is still running, whatever the machine's
    # speed, when it is stopped, and the resumed one has experiments left to run
    from aar_ray.campaign import set_control

    set_control(str(cluster.home), name, "pause", researcher="reweighting-1")

    # a second driver, anywhere on the cluster, is refused before any set-up
    second = _submit(cluster, *campaign, "--resume")
    out = second.stdout + second.stderr
    assert second.returncode != 0 and f"campaign '{name}' is running" in out, out[-3000:]
    assert "preparing testbeds" not in out

    forum = cluster.home / "forum.db"
    _wait_for(lambda: forum.exists() and len(_results(forum, name)) > 0, 900, "no result from the first job")
    stopped = _ray_job(cluster, "job", "stop", "--address", "{address}", first, timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert _wait_job(cluster, first) == "STOPPED"
    # `ray job stop` sends SIGTERM: the driver ends like on Ctrl-C, in one line, within the seconds
    # Ray waits before SIGKILL (RAY_JOB_STOP_WAIT_TIME_S: 60 in jobs/runtime_env.yaml, Ray's 3 s
    # were too few on a busy head)
    logs = _ray_job(cluster, "job", "logs", "--address", "{address}", first, timeout=120).stdout
    assert f"aar campaign: campaign '{name}' interrupted;" in logs and "Traceback" not in logs, logs[-3000:]
    assert not lock.exists()
    operator_key = _operator_key(cluster.home)

    set_control(str(cluster.home), name, "run", researcher="reweighting-1")
    # the user edits the checkout: the next job is another package, in another folder
    packages_before = {p.name for p in cluster.package_folders()}
    config = cluster.checkout / "conf" / "campaign" / "laptop.yaml"
    config.write_text(config.read_text() + "\n# edited between two jobs\n")
    resumed = _submission_id(_submit(cluster, *campaign, "--resume", no_wait=True))
    # a worker node dies (its raylet, by pid) while one of the campaign's experiments runs on it
    killed = _kill_a_worker_running_an_experiment(cluster, resumed)
    assert _wait_job(cluster, resumed) == "SUCCEEDED", _job_logs(cluster, resumed)
    assert {p.name for p in cluster.package_folders()} - packages_before  # it did run the edited copy
    _assert_only_in_the_home(cluster)

    results = _results(forum, name)
    status = _aar("campaign", "status", "--name", name, home=cluster.home, cwd=tmp_path)
    assert len(results) == len(set(results["call_key"])) == 2 * 3, (  # every experiment exactly once
        status.stdout, _job_logs(cluster, resumed))
    scored = [e["key"] for e in _audit(cluster.home) if e["outcome"] == "scored" and e.get("key")]
    assert len(scored) == len(set(scored))  # and scored once: a retried experiment is replayed, not rescored
    assert _operator_key(cluster.home) == operator_key  # the same sealed store, the same budgets
    runs = _experiment_runs(cluster.home, f"campaign-{name}")
    alive = {n["node_id"] for n in cluster.nodes() if n["state"] == "ALIVE" and not n["is_head_node"]}
    assert killed not in alive and set(runs["tags.ray_node_id"].dropna()) <= alive | {killed}
    rows = [line for line in status.stdout.splitlines() if line.startswith('{"name"')]  # not the totals line
    assert status.returncode == 0 and len(rows) == 2 and all('"stopped": "finished' in r for r in rows), status.stdout
    report = _aar("report", name, home=cluster.home, cwd=tmp_path)
    assert report.returncode == 0 and "## Generalisation" in report.stdout
    mlflow.set_tracking_uri(f"sqlite:///{cluster.home / 'mlflow.db'}")
    assert "RUNNING" not in set(mlflow.search_runs(experiment_names=[f"campaign-{name}"])["status"])
    assert not lock.exists()


def _kill_a_worker_running_an_experiment(cluster, job_id: str) -> str:
    """SIGKILL the raylet of a worker node while one of the job's experiment tasks runs on it; its
    node id. Found by process, not through Ray's state API: a task that runs for a fraction of a
    second may never be listed as running there. A worker process titles itself after the task it
    runs (`ray::run_method_task`), and its node's raylet started it."""
    deadline = time.time() + 900
    next_status_check = time.time()
    while time.time() < deadline:
        for worker in psutil.process_iter(["cmdline"]):
            if not any("ray::run_method_task" in part for part in worker.info["cmdline"] or []):
                continue
            with contextlib.suppress(psutil.Error):
                [raylet] = [p for p in worker.parents() if p.name() == "raylet"]
                command = " ".join(raylet.cmdline())
                assert f"--temp_dir={cluster.folder}/worker-" in command  # a worker, never the head
                node = command.split("--node_id=")[1].split()[0]
                raylet.kill()
                return node
        if time.time() > next_status_check:  # the job's status now and then, not every 20 ms
            assert _job_status(cluster, job_id) not in ENDED, (
                "the resumed job ended before an experiment could be interrupted", _job_logs(cluster, job_id))
            next_status_check = time.time() + 2
        time.sleep(0.02)
    raise AssertionError("no experiment of the resumed job ever ran")


def _wait_for(condition, seconds: float, message: str):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, message
        time.sleep(1)


def _operator_key(home: Path) -> str:
    return (home / "sealed" / "operator.key").read_text()


def _audit(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "sealed" / "audit.jsonl").read_text().splitlines() if line]


def _results(db, campaign):
    import sqlite3

    with sqlite3.connect(db) as conn:
        try:
            return pd.read_sql("select * from results where campaign = ?", conn, params=(campaign,))
        except pd.errors.DatabaseError:  # the table is not made yet
            return pd.DataFrame()
