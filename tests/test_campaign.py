"""Campaigns end to end through `aar campaign`: search researchers, generalisation, report, and
resume after the driver is killed or interrupted mid-campaign with nothing lost or counted twice;
one driver per campaign. With no --tracking-uri the MLflow store is the home's."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from aar_ray.config import load_config
from aar_ray.campaign import CampaignConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL_CAMPAIGN = ["testbed=tax-small", "heldout_testbeds=[pref-small]", "researchers=2",
                  "researcher_limits.max_experiments=3", "generalisation.top_k=2",
                  "generalisation.seeds=[1,2]", "scorer.baseline_seeds=2"]
# For the tests of stopping and resuming: the generalisation check at its smallest (their subject
# is the researchers' experiments; the laptop test checks generalisation in full).
SMALLEST_CHECK = ["heldout_testbeds=[]", "generalisation.top_k=1", "generalisation.seeds=[1]"]


def aar_command(home, name, *extra):
    return [sys.executable, "-m", "aar_ray.cli", "campaign", "--config", str(CONF / "campaign" / "laptop.yaml"),
            "--home", str(home), f"name={name}", *SMALL_CAMPAIGN, *extra]


def resume_test_command(home, name, *extra):
    """`aar campaign` for the tests of stopping and resuming (SMALLEST_CHECK)."""
    return aar_command(home, name, *SMALLEST_CHECK, *extra)


def _env():
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("AAR_HOME", None)
    return env


@pytest.mark.parametrize("preset", ["laptop", "paper", "open_model"])
def test_presets_load_and_validate(preset):
    config = load_config(CampaignConfig, CONF / "campaign" / f"{preset}.yaml")
    assert config.researchers >= 3 and config.backend.kind in ("search", "anthropic", "openai")


@pytest.mark.slow
def test_laptop_campaign_runs_checks_generalisation_and_writes_a_report(small_home, tmp_path):
    proc = subprocess.run(aar_command(small_home, "ci"), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report_dir = small_home / "campaigns" / "ci" / "report"
    report = (report_dir / "report.md").read_text()
    for section in ("## PGR over time", "## Winners", "## Flagged ideas", "## Generalisation", "## Audit of the top ideas",
                    "## Cost", "## Models", "## Lineage"):
        assert section in report
    audit = json.loads((small_home / "campaigns" / "ci" / "audit.json").read_text())
    assert len(audit) == 2 and all(a["verdict"] == "pass" or a["verdict"].startswith("fail: ") for a in audit)
    assert all(a["review"] == "not run" for a in audit)  # search researchers: no LLM to review with
    models = json.loads((report_dir / "models.json").read_text())
    assert [(m["model"], m["researchers"], m["dollars"]) for m in models] == [("search", 2, 0.0)]
    assert (report_dir / "pgr_over_time.png").stat().st_size > 1000
    table = json.loads((report_dir / "generalisation.json").read_text())
    assert len(table) == 2 and all("pref-small_holdout_pgr" in row for row in table)
    assert not (tmp_path / "mlflow.db").exists()  # the working directory holds nothing
    mlflow.set_tracking_uri(f"sqlite:///{small_home / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["campaign-ci"])
    assert {"baseline"} - set(runs["tags.submitter"].dropna()) == {"baseline"}  # only researchers and operator
    holdout = runs[runs["tags.split"] == "holdout"]
    assert len(holdout) == 2 * 2 * 2 + 2 * 2  # top-2 ideas x 2 testbeds x 2 seeds, + the teacher ablation
    assert all(isinstance(row["ignores_teacher"], bool) for row in table)
    parent = runs[runs["tags.mlflow.runName"].str.endswith("campaign-ci")]
    assert parent["tags.mlflow.runName"].iloc[0].startswith("PGR ")  # its best, seen in the runs table
    assert {"metrics.best_validation_pgr", "metrics.mean_validation_pgr", "metrics.dollars"} <= set(parent.dropna(axis=1))
    researcher_runs = runs[runs["tags.aar_researcher"].notna()]
    assert len(researcher_runs) == 2 and (researcher_runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"].iloc[0])}
    assert {"report.md", "report.html", "pgr_over_time.png", "generalisation.json", "cost.json", "models.json",
            "audit.json"} <= artifacts
    traces = {Path(a.path).name.removesuffix(".json") for run_id in researcher_runs["run_id"]
              for a in mlflow.MlflowClient().list_artifacts(run_id, "traces")}
    assert traces == set(researcher_runs["tags.aar_researcher"])  # each conversation on its researcher's run


def _wait_for(condition, what: str, timeout: float = 600, every: float = 0.5):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@pytest.mark.slow
def test_a_campaign_survives_ctrl_c_and_a_killed_driver_and_runs_every_experiment_once(small_home, tmp_path):
    """One campaign, three drivers, three directories. The first: a second driver is refused before
    any set-up; Ctrl-C (SIGINT to the foreground process group, as a terminal sends it) ends it with
    one line, no traceback, and no MLflow run left RUNNING. The second (`--resume`) is killed with
    SIGKILL mid-campaign. The third (`--resume`) finishes: every experiment run once, and the forum,
    the scorer's audit log and MLflow agree on every seed."""
    name = "interrupted"
    dirs = {d: tmp_path / d for d in ("first", "second", "third")}
    for d in dirs.values():
        d.mkdir()
    forum_db = small_home / "forum.db"
    # a terminal's foreground job: SIGINT not ignored, even when this test runs in a background
    # job (whose commands a shell starts with SIGINT ignored, and children inherit that)
    driver = subprocess.Popen(resume_test_command(small_home, name), cwd=dirs["first"], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lock = small_home / "campaigns" / name / "lock.json"
        _wait_for(lock.exists, "the first driver's lock")
        started = time.time()
        second = subprocess.run(resume_test_command(small_home, name, "--resume"), cwd=dirs["second"],
                                env=_env(), capture_output=True, text=True, timeout=300)
        refused_after = time.time() - started
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"campaign '{name}' is running (driver pid {driver.pid}" in second.stderr
        assert "preparing testbeds" not in second.stderr and "Traceback" not in second.stderr
        assert refused_after < 60, refused_after  # the interpreter's imports; then under a second

        # one researcher paused from the start (`aar campaign pause --researcher`), so the campaign
        # is still running, whatever the machine's speed, when the other's first result is in
        from aar_ray.campaign import set_control

        set_control(str(small_home), name, "pause", researcher="reweighting-1")
        _wait_for(lambda: forum_db.exists() and len(_results(forum_db, name)) > 0, "a first result")
        assert driver.poll() is None
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"aar campaign: campaign '{name}' interrupted;") and "--resume" in last
    assert not lock.exists()
    mlflow.set_tracking_uri(f"sqlite:///{small_home / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[f"campaign-{name}"])
    assert "RUNNING" not in set(runs["status"])
    assert set(runs.loc[runs["tags.mlflow.runName"] == f"campaign-{name}", "status"]) == {"KILLED"}

    status = subprocess.run([sys.executable, "-m", "aar_ray.cli", "campaign", "status", "--name", name,
                             "--home", str(small_home)], cwd=dirs["third"], env=_env(),
                            capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in status.stdout.strip().splitlines()]  # from a third directory
    assert status.returncode == 0 and rows and all(r["experiments"] >= 0 for r in rows), status.stderr[-2000:]

    # the second driver, with both researchers running again, dies by SIGKILL (no clean-up at all)
    # once it has recorded an experiment of its own
    set_control(str(small_home), name, "run", researcher="reweighting-1")
    done_before = len(_results(forum_db, name))
    killed = subprocess.Popen(resume_test_command(small_home, name, "--resume"), cwd=dirs["second"], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: len(_results(forum_db, name)) > done_before or killed.poll() is not None,
                  "a result from the resumed driver")
        assert killed.poll() is None, "the resumed driver ended before it could be killed"
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()

    resumed = subprocess.run(resume_test_command(small_home, name, "--resume"), cwd=dirs["third"],
                             env=_env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = _results(forum_db, name)
    assert len(results) == len(set(results["call_key"])) == 2 * 3  # every experiment exactly once
    runs = mlflow.search_runs(experiment_names=[f"campaign-{name}"])
    assert set(runs["status"]) <= {"FINISHED", "FAILED"}  # the KILLED parent finished on resume
    validation = runs[runs["tags.split"] == "validation"]
    seeds_in_forum = sum(len(s.split(",")) for s in results["seeds"])
    audit = pd.read_json(small_home / "sealed" / "audit.jsonl", lines=True)
    scored = audit[(audit["outcome"] == "scored") & audit["key"].fillna("").str.startswith(f"{name}/")]
    assert len(validation) == len(set(validation["tags.aar_key"])) == len(scored) == seeds_in_forum


# --------------------------------------------------------------------------- the lock itself


def test_a_live_driver_holds_the_campaign_and_a_dead_one_frees_it(tmp_path, monkeypatch):
    from aar_ray.campaign import lock as lock_module
    from aar_ray.campaign.lock import CampaignLock, CampaignRunning

    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.1)
    path = tmp_path / "campaigns" / "c"
    first = CampaignLock(path, "c").acquire()
    beat = json.loads((path / "lock.json").read_text())["heartbeat"]
    time.sleep(0.5)
    assert json.loads((path / "lock.json").read_text())["heartbeat"] > beat  # the heartbeat runs
    with pytest.raises(CampaignRunning, match=rf"campaign 'c' is running \(driver pid {os.getpid()} on "):
        CampaignLock(path, "c").acquire()
    first.release()
    assert not path.exists()  # a campaign that never started leaves nothing

    # a driver killed with SIGKILL: its pid is gone, the lock is free at once on this machine
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = CampaignLock(path, "c")
    stale.record["pid"] = dead.pid
    path.mkdir(parents=True)
    stale._replace()
    with CampaignLock(path, "c") as taker:
        assert json.loads((path / "lock.json").read_text())["owner"] == taker.owner


def test_a_lock_from_another_machine_is_trusted_until_its_heartbeat_stops(tmp_path, monkeypatch):
    from aar_ray.campaign import lock as lock_module
    from aar_ray.campaign.lock import CampaignLock, CampaignRunning

    path = tmp_path / "c"
    path.mkdir()
    remote = CampaignLock(path, "c")
    remote.record.update(host="node-7", pidns="another-machine", pid=1)
    remote._replace()
    with pytest.raises(CampaignRunning, match="on node-7"):
        CampaignLock(path, "c").acquire()
    monkeypatch.setattr(lock_module, "STALE_S", 0.2)  # its heartbeat has stopped for STALE_S
    time.sleep(0.3)
    with CampaignLock(path, "c") as taker:
        assert json.loads((path / "lock.json").read_text())["owner"] == taker.owner


def _results(db, campaign):
    import sqlite3

    with sqlite3.connect(db) as conn:
        return pd.read_sql("select * from results where campaign = ?", conn, params=(campaign,))


@pytest.mark.slow
def test_operator_can_pause_stop_and_inspect_a_campaign(small_home, tmp_path):
    from aar_ray.agents.budget import Budget
    from aar_ray.agents.researcher import Researcher, ResearcherConfig
    from aar_ray.agents.tools import ToolContext
    from aar_ray.campaign import campaign_status, set_control
    from aar_ray.campaign.paths import CampaignPaths

    name = "operated"
    state_dir = small_home / "campaigns" / name / "researchers" / "r0"
    state_dir.mkdir(parents=True)
    tools = ToolContext(researcher="r0", campaign=name, testbed="tax-small", home=str(small_home),
                        workspace=state_dir / "workspace", scorer=None, forum=None, tracker=None, budget=Budget())
    researcher = Researcher(ResearcherConfig("r0", "anything", "tax-small"), tools, state_dir,
                            CampaignPaths(small_home, name).control)
    set_control(str(small_home), name, "stop", researcher="r0")
    assert researcher.run()["stopped"] == "stopped by the operator"
    assert campaign_status(str(small_home), name)[0]["stopped"] == "stopped by the operator"
    with pytest.raises(ValueError, match="allowed: run, pause, stop"):
        set_control(str(small_home), name, "explode")


def _one_researcher_campaign_in_a_thread(name: str, home, tmp_path):
    """A campaign run by this process's Ray (so a test can inject faults into it); returns the
    driver thread and the dict its outcome lands in."""
    import threading

    from aar_ray.campaign import run_campaign

    config = load_config(CampaignConfig, CONF / "campaign" / "laptop.yaml", [
        f"name={name}", *SMALL_CAMPAIGN, "researchers=1", f"home={home}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    outcome = {}
    # daemon: an interrupted pytest must not wait for a campaign nobody will join
    driver = threading.Thread(target=lambda: outcome.update(run_campaign(config, progress=False)), daemon=True)
    driver.start()
    return driver, outcome


@pytest.mark.slow
def test_a_killed_researcher_actor_restarts_and_resumes_its_work(small_home, tmp_path, local_ray):
    from aar_ray.forum import Forum, default_url

    driver, outcome = _one_researcher_campaign_in_a_thread("actorkill", small_home, tmp_path)
    forum = Forum(default_url(small_home), "actorkill")
    deadline = time.time() + 600
    while not forum.results() and time.time() < deadline:
        time.sleep(0.5)
    actor = local_ray.get_actor("researcher-actorkill-representations-0", namespace="aar")
    local_ray.kill(actor, no_restart=False)  # the process dies; Ray restarts it from its checkpoint
    driver.join(timeout=600)
    assert outcome["researchers"][0]["stopped"].startswith("finished")
    keys = [r.call_key for r in forum.results()]
    assert len(keys) == len(set(keys)) == 3


def _kill_a_running_experiment_worker(deadline: float) -> int:
    """SIGKILL the worker process of a running experiment task (Ray titles it after the task)."""
    import psutil

    while time.time() < deadline:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any("ray::run_method_task" in part for part in proc.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    return proc.info["pid"]
        time.sleep(0.02)
    raise AssertionError("no experiment task was seen running")


@pytest.mark.slow
def test_a_killed_experiment_worker_is_retried_and_counted_once(small_home, tmp_path, local_ray):
    from aar_ray.forum import Forum, default_url

    driver, outcome = _one_researcher_campaign_in_a_thread("workerkill", small_home, tmp_path)
    killed = _kill_a_running_experiment_worker(deadline=time.time() + 600)
    driver.join(timeout=600)
    assert killed and outcome["researchers"][0]["stopped"].startswith("finished")
    results = Forum(default_url(small_home), "workerkill").results()
    keys = [r.call_key for r in results]
    assert len(keys) == len(set(keys)) == 3 and all(r.pgr is not None for r in results)
    # the scorer's audit log, MLflow and the forum agree: every seed scored once, recorded once
    audit = pd.read_json(small_home / "sealed" / "audit.jsonl", lines=True)
    scored = audit[(audit["outcome"] == "scored") & audit["key"].fillna("").str.startswith("workerkill/")]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["campaign-workerkill"], filter_string="tags.split = 'validation'")
    seeds = sum(len(r.seeds) for r in results)
    assert len(scored) == len(set(scored["key"])) == seeds == len(runs)
    assert "tags.error" not in runs or runs["tags.error"].isna().all()


@pytest.mark.slow
def test_an_experiment_whose_worker_keeps_dying_is_recorded_as_an_error_not_a_crash(local_ray):
    from aar_ray.experiments.sweep import finish

    @local_ray.remote(max_retries=0)
    def dies():
        os._exit(1)

    result, score, error = finish(dies.remote(), scorer=None, submitter="r0", spec=None)
    assert result is None and score == {} and "worker died" in error and "nothing was scored" in error


@pytest.mark.slow
def test_a_campaign_on_an_unreachable_open_model_server_is_refused_before_any_set_up(tmp_path):
    """Pre-flight runs first: no Ray, no testbed, no researcher is started for a server that is
    not there, and the message says what was checked."""
    import socket

    from aar_ray.agents.preflight import PreflightError
    from aar_ray.agents.researcher import BackendConfig
    from aar_ray.campaign import run_campaign

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = CampaignConfig(name="no-server", home=str(tmp_path / "home"), backend=BackendConfig(
        kind="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1", startup_timeout_s=1.0))
    started = time.monotonic()
    with pytest.raises(PreflightError, match=f"127.0.0.1:{port}"):
        run_campaign(config, progress=False)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "home" / "testbeds").exists()
