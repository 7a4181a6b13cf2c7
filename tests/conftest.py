"""Shared fixtures: small testbeds imported through the real importer into a temporary home."""

import json
import os
import sys

import pytest

from aar_ray import environment
from aar_ray.testbeds import import_testbed
from aar_ray.testbeds.embedded import SplitSizes, generate

# The suite is an entry point: its processes, and the local Rays it starts, run offline with
# vLLM's engine core in-process, as `aar`'s processes do.
environment.prepare_process()
# Ray starts its workers at niceness 15, so that they yield to its own processes. Beside any other
# load on the machine that starves them: under two busy loops on 2 cores a vLLM replica got 23 s of
# CPU in 10 minutes and every end-to-end test timed out. The suite's Rays, in-process or in an
# `aar` subprocess, inherit this and compete on equal terms.
os.environ.setdefault("RAY_worker_niceness", "0")

SMALL = SplitSizes(train_label=200, train_unlabel=600, test=300)


def write_jsonl_folder(path, rows_by_split):
    path.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def no_leaked_environment():
    """Each test leaves the process environment as it found it. What leaks reaches every later
    subprocess of the suite: `mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI, so a test that
    reads its runs that way sent a later test's `aar` to its store."""
    before = dict(os.environ)
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)  # its global URI, and the variable it exported
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


@pytest.fixture(scope="session")
def small_home(tmp_path_factory):
    """A home with `tax-small` (binary) and `pref-small` (comparison), imported from JSONL."""
    home = tmp_path_factory.mktemp("home")
    for task, name in (("taxonomy", "tax-small"), ("preference", "pref-small")):
        src = write_jsonl_folder(home.parent / f"src-{name}", generate(task, sizes=SMALL))
        import_testbed(src, name, home)
    return home


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="aar",
             logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and OpenMP threads that spin-wait on a busy machine
    can make them a hundred times slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def gpu_ray(request):
    """A private local Ray with two logical GPUs (no device needed) and four CPUs, so that the
    GPUs, not the CPUs, are what limits scheduling. address="local": never another cluster."""
    import ray

    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(request.module)  # workers cannot import tests/
    yield ray
    ray.shutdown()


# Fixtures that start a Ray: a test that uses one (even through another fixture) is end to end.
RAY_FIXTURES = {"local_ray", "gpu_ray"}


def pytest_collection_modifyitems(config, items):
    """Keep the fast tier fast: a test that starts Ray must be in the slow tier."""
    unmarked = [item.nodeid for item in items
                if RAY_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests start Ray; mark them @pytest.mark.slow (the fast tier is "
                                "-m 'not slow'):\n  " + "\n  ".join(unmarked))
