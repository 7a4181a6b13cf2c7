"""The control-plane and shared-GPU-pool benchmarks at a tiny scale: one JSON line each, with the
keys the README quotes and figures that make sense."""

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import control_plane  # noqa: E402
import shared_gpu_pool  # noqa: E402


def run_main(module, argv) -> tuple[str, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report = module.main(argv)
    return out.getvalue(), report


def only_json_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def control_plane_run(small_home):
    # 3 GPUs: 2 researchers have a GPU free for every experiment, 4 share the pool
    return run_main(control_plane, ["--levels", "2,4", "--experiments", "2", "--hour-seconds", "0.2",
                                    "--gpu-pool", "3", "--fresh-tasks", "1", "--home", str(small_home)])


def test_control_plane_prints_one_json_line_with_every_figure(control_plane_run):
    stdout, returned = control_plane_run
    report = only_json_line(stdout)
    assert report == json.loads(json.dumps(returned))
    assert report["levels"] == [2, 4]
    assert set(report["growth_2_to_4"]) == {f"{k}_{s}" for k in ("scheduling_overhead", "scorer_latency",
                                                                 "mlflow_write", "mlflow_wait")
                                           for s in ("p50", "p99")}
    assert set(report["growth_steps"]) == {"2_to_4"}
    assert report["gpus"] == 3
    for level in report["per_level"]:
        assert level["experiments"] == 2 * level["researchers"]
        for key in ("scheduling_overhead_s", "scorer_latency_s", "mlflow_write_s", "mlflow_wait_s"):
            figures = level[key]
            assert 0 <= figures["p50"] <= figures["p99"] < 30, (key, figures)
        for key in ("scorer_latency_s", "mlflow_write_s", "mlflow_wait_s"):
            assert level[key]["n"] == level["experiments"]
        # every experiment is either timed for scheduling overhead or waited for a GPU
        assert level["scheduling_overhead_s"]["n"] + level["gpu_queue_wait_s"]["n"] == level["experiments"]
        assert level["submitted_with_gpu_free"] == level["scheduling_overhead_s"]["n"]
    small, shared = report["per_level"]
    assert small["gpu_queue_wait_s"]["n"] == 0 and small["submitted_with_gpu_free"] == small["experiments"]
    assert "GPU is free for every experiment" in report["gpu_policy"]["2"]
    assert report["gpu_policy"]["4"].startswith("shared pool: 3 GPUs for 4 researchers")


def test_control_plane_loses_nothing_and_keeps_budgets_exact(control_plane_run):
    _, report = control_plane_run
    for level in report["per_level"]:
        checks = level["checks"]
        assert checks["submissions"] == checks["audit_scored"] == checks["mlflow_runs"] == level["experiments"]
        assert checks["lost_submissions"] == checks["lost_records"] == 0
        assert checks["remaining_exact"]
        assert checks["over_budget_refused"] == checks["over_budget_audited"] == level["researchers"]
        assert 0 < checks["peak_gpus_in_use"] <= level["gpus"]  # the scheduler honoured the pool
    assert report["all_checks_pass"]


def test_control_plane_books_catch_a_lost_submission():
    level = {"researchers": 2, "gpus": 2,
             "checks": {"lost_submissions": 1, "lost_records": 0, "remaining_exact": True,
                        "over_budget_refused": 2, "over_budget_audited": 2, "peak_gpus_in_use": 2}}
    assert not control_plane.books_balance(level)
    level["checks"]["lost_submissions"] = 0
    assert control_plane.books_balance(level)
    level["checks"]["peak_gpus_in_use"] = 3  # more experiments at once than GPUs
    assert not control_plane.books_balance(level)


def test_control_plane_samples_memory_of_its_own_processes():
    sampler = control_plane.MemorySampler()
    if not sampler.enabled:
        pytest.skip("no /proc/self/smaps_rollup")
    full = sampler.sample(full=True)
    assert full["rss_mb"] >= full["pss_mb"] > 0 and full["available_mb"] > 0
    sampler.phase = "x"
    sampler._record(full)
    sampler._record(sampler.sample(full=False))
    report = sampler.report("x")
    assert report["samples"] == 2 and report["full_samples"] == 1
    assert report["peak_pss_mb"] == round(full["pss_mb"])


def test_shared_pool_does_more_experiments_per_gpu_hour_than_dedicated_gpus():
    stdout, _ = run_main(shared_gpu_pool, ["--researchers", "3", "--seconds", "2", "--hour-seconds", "0.1"])
    report = only_json_line(stdout)
    dedicated, shared = report["dedicated"], report["shared"]
    assert (dedicated["gpus"], shared["gpus"], shared["researchers"]) == (3, 1, 3)
    for policy in (dedicated, shared):
        assert 0 < policy["gpu_utilisation"] <= 1
        assert 0 < policy["peak_gpus_in_use"] <= policy["gpus"]  # the scheduler honoured the pool
        assert policy["experiments_finished"] > 0
    assert shared["experiments_per_gpu_hour"] > dedicated["experiments_per_gpu_hour"]
    assert shared["dollars_per_agent_hour"] < dedicated["dollars_per_agent_hour"]
    assert report["ratios"]["experiments_per_gpu_hour"] == pytest.approx(
        shared["experiments_per_gpu_hour"] / dedicated["experiments_per_gpu_hour"], abs=0.01)


def test_utilisation_counts_only_gpu_time_inside_the_window():
    workload = control_plane.Workload(hour_seconds=1.0)
    # 1 s = 1 h; two GPUs, a 10 h window: one task 2-6 h, one 8-14 h (2 h of it inside) -> 6 of 20
    spans = [(1.0, 2.0, 6.0), (7.0, 8.0, 14.0)]
    figures = shared_gpu_pool.summarise(spans, 0.0, 10.0, gpus=2, researchers=2, workload=workload, price=2.5)
    assert figures["gpu_utilisation"] == pytest.approx(0.3)
    assert figures["experiments_finished"] == 1
    assert figures["experiments_per_gpu_hour"] == pytest.approx(0.05)  # 1 / (2 GPUs x 10 h)
    assert figures["peak_gpus_in_use"] == 1
    assert figures["dollars_per_agent_hour"] == pytest.approx(2.5)


def test_expected_load_is_the_share_of_a_cycle_spent_in_experiments():
    # think always 4,610 s, experiments 2,870-6,350 s (mean 4,610 s): GPUs busy half the time
    workload = control_plane.Workload(think_median_s=4610.0, think_sigma=0.0)
    assert shared_gpu_pool.expected_load(workload, researchers=30) == {
        "dedicated_utilisation": 0.5, "gpus_busy_on_average": 15.0}
