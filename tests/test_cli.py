"""`aar` end to end in subprocesses: import, sweep on a local Ray, MLflow records, holdout.

Every command gets the same home through $AAR_HOME (as a user's shell would), and runs from a
directory of its own, so the tests also show that nothing depends on the working directory."""

import argparse
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from conftest import SMALL, write_jsonl_folder
from aar_ray.cli import build_parser, parse_seeds
from aar_ray.testbeds.embedded import generate


def aar(*args, cwd, check=True, home=None):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("AAR_HOME", None)
    if home is not None:
        env["AAR_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "aar_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"aar {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A checkout-like directory with the data, and the user's aar home ($AAR_HOME) elsewhere."""
    work = tmp_path_factory.mktemp("work")
    write_jsonl_folder(work / "data", generate("taxonomy", seed=3, sizes=SMALL))
    aar("testbed", "import", "data", "--name", "tax", cwd=work, home=home_of(work))
    return work


def home_of(work):
    return work.parent / f"{work.name}-aar-home"


@pytest.fixture()
def elsewhere(tmp_path):
    """Another directory, to run commands from."""
    return tmp_path


def test_help_teaches_the_workflow():
    out = aar("--help", cwd=".").stdout
    assert "PGR = (transfer_acc - weak_acc) / (strong_acc - weak_acc)" in out
    for command in ("campaign", "testbed", "baseline", "leaderboard", "score-holdout", "ui", "report"):
        assert command in out


@pytest.mark.slow
def test_import_errors_are_reported_without_a_traceback(workdir):
    (workdir / "bad").mkdir()
    (workdir / "bad" / "train_label.jsonl").write_text('{"question": "q"}\n')
    proc = aar("testbed", "import", "bad", "--name", "bad", cwd=workdir, check=False, home=home_of(workdir))
    assert proc.returncode == 2
    assert "train_label.jsonl:1:" in proc.stderr and "Traceback" not in proc.stderr
    assert "bad" not in aar("testbed", "list", cwd=workdir, home=home_of(workdir)).stdout.split()


@pytest.mark.slow
def test_baseline_sweep_records_every_run_in_mlflow_and_prints_a_leaderboard(workdir, elsewhere):
    out = aar("baseline", "--testbed", "tax", "--method", "vanilla_w2s", "--method",
              "zero_shot_prior", "--seeds", "1-2", "scorer.baseline_seeds=2",
              cwd=workdir, home=home_of(workdir)).stdout
    assert "zero_shot_prior" in out and "vanilla_w2s" in out
    # the default store follows the home, never the working directory
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlartifacts").exists()
    assert (home_of(workdir) / "mlartifacts").is_dir()
    mlflow.set_tracking_uri(f"sqlite:///{home_of(workdir) / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["aar-baselines"], filter_string="tags.aar_kind = 'experiment'")
    assert len(runs) == 4
    assert set(runs["params.method"]) == {"vanilla_w2s", "zero_shot_prior"}
    assert runs["metrics.pgr"].notna().all() and (runs["metrics.wall_seconds"] > 0).all()
    assert set(runs["params.student.head"]) == {"mlp"}
    run_id = runs["run_id"].iloc[0]
    predictions = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet"))
    assert list(predictions.columns) == ["id", "p"] and "label" not in predictions
    board = aar("leaderboard", cwd=elsewhere, home=home_of(workdir)).stdout  # from another directory
    assert "tax" in board and "PGR mean ± sd" in board


@pytest.mark.slow
def test_score_holdout_reruns_the_method_on_the_holdout_half(workdir):
    out = aar("score-holdout", "--testbed", "tax", "--method", "zero_shot_prior", "--seeds", "1",
              cwd=workdir, home=home_of(workdir)).stdout
    assert "seed 1: holdout PGR" in out
    audit = pd.read_json(home_of(workdir) / "sealed" / "audit.jsonl", lines=True)
    holdout = audit[audit["split"] == "holdout"]
    assert len(holdout) == 1 and set(holdout["submitter"]) == {"operator"}
    # The teacher-ablation control: the prior takes only the teacher's share of True, which a
    # shuffle keeps, so its PGR does not move.
    shuffled = aar("score-holdout", "--testbed", "tax", "--method", "zero_shot_prior", "--seeds", "1",
                   "--shuffle-teacher", cwd=workdir, home=home_of(workdir)).stdout
    assert shuffled.splitlines()[-1] == out.splitlines()[-1]
    mlflow.set_tracking_uri(f"sqlite:///{home_of(workdir) / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["aar-holdout"])
    assert sorted(runs["tags.ablation"].fillna("none")) == ["none", "shuffled_teacher"]
    assert set(runs["params.shuffle_teacher"]) == {"False", "True"}


@pytest.mark.slow
def test_bad_method_name_fails_before_any_work(workdir):
    proc = aar("baseline", "--method", "majority_vote", cwd=workdir, check=False, home=home_of(workdir))
    assert proc.returncode == 2 and "allowed: vanilla_w2s" in proc.stderr


@pytest.mark.slow
def test_a_relative_home_is_taken_from_where_the_command_was_typed(workdir, elsewhere):
    aar("testbed", "import", str(workdir / "data"), "--name", "rel", "--home", "state", cwd=elsewhere)
    assert (elsewhere / "state" / "testbeds" / "rel").is_dir()
    assert "rel" in aar("testbed", "list", "--home", str(elsewhere / "state"), cwd=workdir).stdout.split()


@pytest.mark.parametrize("text, message", [
    ("5-1", "runs backwards; write 1-5"),
    ("1--3", "use a range like 1-5"),
    ("0-0", "seeds start at 1"),
    ("0", "seeds start at 1"),
    ("-2", "use a range like 1-5"),
    ("1,", "use a range like 1-5"),
    ("a-b", "use a range like 1-5"),
    ("1-3,2", "seed 2 is listed twice"),
])
def test_bad_seed_ranges_are_refused(text, message, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_seeds(text)
    with pytest.raises(SystemExit) as exit_:  # as `aar baseline --seeds ...` sees it: no run
        build_parser().parse_args(["baseline", "--seeds", text])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_good_seed_ranges():
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("2") == [2] and parse_seeds("1,3,7") == [1, 3, 7]
    assert parse_seeds("1-2, 7") == [1, 2, 7]


def test_help_loads_no_heavy_library():
    """`aar --help` stays instant: the commands import what they need when they run."""
    probe = ("import sys, contextlib, io\nfrom aar_ray.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "    main(['--help'])\n"
             "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'pandas', 'omegaconf') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_campaign_actions_are_subcommands_and_run_is_the_default():
    from aar_ray.cli import with_default_campaign_action as with_default

    parser = build_parser()
    run = parser.parse_args(with_default(["campaign", "--config", "c.yaml", "researchers=5"]))
    assert (run.action, str(run.config), run.overrides) == ("run", "c.yaml", ["researchers=5"])
    pause = parser.parse_args(with_default(["campaign", "pause", "--name", "lab", "--researcher", "r-0"]))
    assert (pause.action, pause.name, pause.researcher) == ("pause", "lab", "r-0")
    assert parser.parse_args(with_default(["campaign", "status", "--name", "lab"])).action == "status"


@pytest.mark.parametrize("argv, message", [
    (["campaign", "stop"], "the following arguments are required: --name"),
    (["campaign", "status", "--name", "lab", "--researcher", "r"], "unrecognized arguments: --researcher r"),
])
def test_campaign_control_mistakes_are_usage_errors(argv, message, capsys):
    from aar_ray.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_campaign_is_a_one_line_error(tmp_path, capsys):
    from aar_ray.cli import main

    assert main(["campaign", "status", "--name", "nope", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aar campaign: error: no campaign 'nope'") and "Traceback" not in err


def test_a_bug_in_a_command_is_not_reported_as_a_user_error(monkeypatch):
    from aar_ray import cli

    def broken(args):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setitem(cli.COMMANDS, "methods", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["methods"])


@pytest.mark.slow
def test_aar_ui_runs_one_server_worker_and_no_mlflow_job_runner(tmp_path):
    """MLflow's defaults (4 workers and its GenAI job runner, 15 processes that each import MLflow)
    delay a first page on a small machine; `aar ui` starts 2 processes, and sets that itself, not
    from the caller's environment."""
    import signal
    import time

    import psutil
    from ports import free_port, wait_until_healthy

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "MLFLOW_TRACKING_URI", "AAR_HOME")}
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "aar_ray.cli", "ui", "--port", str(port), "--home", str(tmp_path)],
                          cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        assert wait_until_healthy(f"http://127.0.0.1:{port}/health", ui, 600), "aar ui did not serve"
        time.sleep(3)  # MLflow starts its job runner after the server answers
        group = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(proc.pid) == ui.pid:
                    group.append(" ".join(proc.info["cmdline"] or []))
            except (ProcessLookupError, psutil.Error):
                continue
        assert not [c for c in group if "huey" in c or "_job_runner" in c], group
        assert len(group) == 2, group  # the server and its one uvicorn worker
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()
