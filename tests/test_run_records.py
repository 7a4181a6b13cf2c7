"""What the MLflow records say to a person reading them: the experiment opens as model
development, runs are named uniquely after who ran what where, every run carries the code
version and the command, parent runs carry their summaries; and the tracker leaves the process's
environment and MLflow's global state alone."""

import mlflow
import pandas as pd
import pytest

from aar_ray.tracking import Tracker, code_version, entry_point

PARAMS = {"testbed": "taxonomy", "method": "zero_shot_prior", "seed": 1, "eval_split": "validation"}


@pytest.fixture()
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "records", spool_dir=tmp_path / "spool")


def _experiment(tracker, pgr, parent, who="reweighting-1", **params):
    return tracker.log_experiment("ignored", {**PARAMS, **params}, {"pgr": pgr},
                                  {"aar_kind": "experiment", "submitter": who, "split": "validation"},
                                  predictions=pd.DataFrame({"id": [0], "p": [0.9]}), parent_run_id=parent)


def test_the_experiment_opens_on_runs_and_its_link_shows_pgr_columns(tracker):
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    url = tracker.results_url("http://127.0.0.1:5000/")
    assert url == (f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs"
                   "?workflowType=machine_learning&viewStateShareKey=aar-results")
    assert "metrics.`best_validation_pgr`" in experiment.tags["mlflow.sharedViewState.aar-results"]


def test_an_existing_experiment_is_tagged_when_a_tracker_opens_it(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'old.db'}")
    client.create_experiment("older")
    Tracker(f"sqlite:///{tmp_path / 'old.db'}", "older", spool_dir=tmp_path / "spool")
    assert client.get_experiment_by_name("older").tags["mlflow.experimentKind"] == "custom_model_development"


def test_runs_are_named_after_researcher_idea_testbed_split_seed_and_never_twice(tracker):
    parent = tracker.start_parent("campaign-x", {})
    first = _experiment(tracker, 0.5, parent)
    again = _experiment(tracker, 0.6, parent)  # the same idea and seed, submitted again
    other = _experiment(tracker, 0.4, parent, who="representations-0")
    holdout = _experiment(tracker, 0.3, parent, eval_split="holdout")
    names = {run: tracker.client.get_run(run).info.run_name for run in (first, again, other, holdout)}
    assert names == {first: "reweighting-1/zero_shot_prior/taxonomy/validation/seed1",
                     again: "reweighting-1/zero_shot_prior/taxonomy/validation/seed1 (2)",
                     other: "representations-0/zero_shot_prior/taxonomy/validation/seed1",
                     holdout: "reweighting-1/zero_shot_prior/taxonomy/holdout/seed1"}


def test_every_run_carries_the_code_version_and_the_command_of_its_campaign(tracker, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/work/.venv/bin/aar", "campaign", "--config", "x.yaml"])
    campaign = tracker.start_parent("campaign-x", {})
    # a researcher's runs are written from a Ray worker, whose command line is Ray's
    monkeypatch.setattr("sys.argv", ["/ray/_private/workers/default_worker.py", "--node-ip-address=1"])
    researcher = tracker.researcher_run(campaign, "reweighting-1")
    run = _experiment(tracker, 0.5, researcher)
    version = code_version()
    for run_id in (campaign, researcher, run):
        tags = tracker.client.get_run(run_id).data.tags
        assert tags["mlflow.source.name"] == "aar campaign"
        assert tags["mlflow.source.git.commit"] == version["mlflow.source.git.commit"]
        assert len(tags["aar_code_hash"]) == 16


def test_entry_points_name_the_program_and_its_subcommand():
    assert entry_point(["/venv/bin/aar", "baseline", "--seeds", "1-5"]) == "aar baseline"
    assert entry_point(["/ckpt/jobs/campaign.py", "--config", "c.yaml"]) == "jobs/campaign.py"
    assert entry_point(["/venv/bin/aar", "student.epochs=3"]) == "aar"


def test_the_code_version_is_the_git_commit(tracker):
    import subprocess
    from pathlib import Path

    code_version.cache_clear()  # read once per process; this test reads it now
    version = code_version()
    head = subprocess.run(["git", "-C", str(Path(__file__).parents[1]), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert version["mlflow.source.git.commit"] == head


def test_a_researcher_has_one_run_under_the_campaign_found_again_on_restart(tracker):
    campaign = tracker.start_parent("campaign-x", {})
    first = tracker.researcher_run(campaign, "reweighting-1")
    tracker.client.set_terminated(first, "KILLED")  # the driver died
    assert tracker.researcher_run(campaign, "reweighting-1") == first
    assert tracker.client.get_run(first).info.status == "RUNNING"
    assert tracker.client.get_run(first).data.tags["mlflow.parentRunId"] == campaign
    assert tracker.researcher_runs(campaign) == {"reweighting-1": first}


def test_a_parent_run_ends_with_its_experiments_summary_and_says_its_best_pgr(tracker):
    sweep = tracker.start_parent("baseline-sweep", {})
    for pgr in (0.2, 0.6):
        _experiment(tracker, pgr, sweep)
    tracker.log_experiment("x", {**PARAMS, "method": "zero_shot_prior"}, {"pgr": 0.9}, {
        "aar_kind": "experiment", "submitter": "baseline", "flags": "matches_shortcut:zero_shot_prior"},
        parent_run_id=sweep)
    tracker.log_experiment("x", {**PARAMS, "method": "broken"}, {"pgr": None}, {
        "aar_kind": "experiment", "submitter": "baseline", "error": "ValueError: no"}, parent_run_id=sweep)
    tracker.finish_parent(sweep)
    run = tracker.client.get_run(sweep)
    assert run.data.metrics == {"best_validation_pgr": 0.6, "best_validation_pgr_any": 0.9,
                                "mean_validation_pgr": pytest.approx(0.5667, abs=1e-4),
                                "experiments": 4, "failed_experiments": 1}
    assert run.info.run_name == "PGR 0.60 · baseline-sweep"
    assert run.info.status == "FINISHED"


def test_reading_runs_leaves_mlflows_global_tracking_uri_alone(tmp_path):
    before = mlflow.get_tracking_uri()
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "quiet", spool_dir=tmp_path / "spool")
    _experiment(tracker, 0.5, None)
    runs = tracker.runs()
    assert runs["params.method"].tolist() == ["zero_shot_prior"] and runs["metrics.pgr"].tolist() == [0.5]
    assert mlflow.get_tracking_uri() == before


def test_the_leaderboard_puts_flagged_methods_after_the_unflagged_ones(tracker):
    from aar_ray.tracking import format_leaderboard, leaderboard

    for method, pgr, flags in (("zero_shot_prior", 0.86, "matches_shortcut:zero_shot_prior"),
                               ("aux_confidence", 0.8, ""), ("vanilla_w2s", 0.3, "")):
        for seed in (1, 2):
            tags = {"aar_kind": "experiment", "submitter": "baseline", **({"flags": flags} if flags else {})}
            tracker.log_experiment("x", {**PARAMS, "method": method, "seed": seed}, {
                "pgr": pgr, "transfer_acc": 0.8, "weak_acc": 0.7, "strong_acc": 0.9}, tags)
    table = leaderboard(tracker.runs())
    assert table["method"].tolist() == ["aux_confidence", "vanilla_w2s", "zero_shot_prior"]
    assert table["flags"].tolist() == ["", "", "matches_shortcut:zero_shot_prior"]
    assert format_leaderboard(table).splitlines()[-1].endswith("matches_shortcut:zero_shot_prior")
