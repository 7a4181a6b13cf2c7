"""Tracking against a real `mlflow server`: records survive the server going away mid-run."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from aar_ray.tracking import Tracker
from ports import free_port, wait_until_healthy

pytestmark = pytest.mark.slow



def _start_server(tmp_path, port):
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if wait_until_healthy(f"http://127.0.0.1:{port}/health", proc, 90, probe_timeout=1):
        return proc
    _stop(proc)
    pytest.fail("mlflow server did not start")


def _stop(proc):
    """The server and its workers: they share the process group the server started."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _log(tracker, key):
    return tracker.log_experiment(f"run-{key}", {"method": "vanilla_w2s"}, {"pgr": 0.5}, {"aar_key": key},
                                  predictions=pd.DataFrame({"id": [0, 1], "p": [0.2, 0.9]}))


def test_records_are_spooled_while_the_server_is_down_and_written_once_it_is_back(tmp_path, monkeypatch):
    port = free_port()
    server = _start_server(tmp_path, port)
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    # MLflow's own telemetry, on outside CI, writes a session id into os.environ on first use:
    # off here, as on a machine with no network, so the check below sees the tracker alone
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    environment = dict(os.environ)
    tracker = Tracker(f"http://127.0.0.1:{port}", "outage", spool_dir=tmp_path / "spool")
    assert dict(os.environ) == environment  # the tracker fails over by itself, not by changing the process
    assert not _log(tracker, "a").startswith("pending:")
    _stop(server)
    pending = _log(tracker, "b")
    assert pending.startswith("pending:") and len(list((tmp_path / "spool").rglob("*.json"))) == 1
    server = _start_server(tmp_path, port)
    try:
        assert not _log(tracker, "c").startswith("pending:")  # flushes "b" first
        runs = tracker.client.search_runs([tracker.experiment_id])
        assert sorted(r.data.tags["aar_key"] for r in runs) == ["a", "b", "c"]
        assert not list((tmp_path / "spool").rglob("*.json"))
        assert tracker.flush_spool() == 0
    finally:
        _stop(server)


def test_the_default_store_and_spool_follow_the_home_not_the_working_directory(tmp_path, monkeypatch):
    from aar_ray.tracking import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AAR_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert resolve_tracking_uri(None, "/srv/aar") == "sqlite:////srv/aar/mlflow.db"
    tracker = Tracker(resolve_tracking_uri(), "here")
    assert tracker.spool == tmp_path / "home" / "tracking-spool" / "here"
    assert tracker.client.get_experiment(tracker.experiment_id).artifact_location == \
        (tmp_path / "home" / "mlartifacts").as_uri()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_an_interrupted_commands_runs_end_killed_and_are_replaced_on_resume(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "interrupt", spool_dir=tmp_path / "spool")
    before = tracker.client.create_run(tracker.experiment_id).info.run_id  # someone else's, earlier
    time.sleep(0.01)
    started = time.time()
    parent = tracker.start_parent("campaign-x", {})
    cut = tracker.client.create_run(tracker.experiment_id, tags={"aar_key": "x/r/1/1"}).info.run_id
    assert tracker.mark_killed(started, [parent]) == 2
    status = {r: tracker.client.get_run(r).info.status for r in (before, parent, cut)}
    assert status == {before: "RUNNING", parent: "KILLED", cut: "KILLED"}
    # on resume: the KILLED record under the key is replaced in full, the parent runs again
    assert tracker.find_run("x/r/1/1") is None and not _log(tracker, "x/r/1/1").startswith("pending:")
    tracker.reopen_parent(parent)
    assert tracker.client.get_run(parent).info.status == "RUNNING"
