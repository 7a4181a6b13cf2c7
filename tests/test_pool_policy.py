"""The engine pool's failure policy: a replica that never becomes ready (an engine that hangs while
loading, an actor Ray can never place) is stopped and replaced after `replica_ready_timeout_s`,
by a request or, in an idle pool, by the pool itself,
and a request that cannot be served fails with a clear error instead of waiting forever; an
engine that raises while it loads fails the request with its own error after a few tries.
On a local Ray with two logical GPUs; the engines are test-local stand-ins (cheap, or broken)."""

import contextlib
import functools
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from aar_ray.engines import EnginePool, PoolConfig
from aar_ray.engines.pool import MAX_FAILED_STARTS, POLL_S

MODEL = SimpleNamespace(model="org/tiny-test-model")  # what the pool names in its errors
SLACK_S = 3 * POLL_S + 10  # a request notices a deadline within a poll or two; a busy machine is slow


def eventually(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True


class EchoEngine:
    """P = the row's "p" field; generate answers with the replica's process id."""

    def score_labels(self, items, adapter=None, labels=None, zero_shot=False):
        return np.array([x["p"] if isinstance(x, dict) else 0.5 for x in items], dtype=np.float32)  # str: warm-up

    def generate(self, prompts, max_tokens, adapter=None):
        return [str(os.getpid()) for _ in prompts]

    def load_adapter(self, name, path):
        pass


class HangOnceEngine(EchoEngine):
    """The first replica to build it writes its process id to `marker` and hangs for good (a
    stuck weight download, say); later replicas load at once."""

    def __init__(self, marker: str):
        if not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            while True:
                time.sleep(60)


@pytest.fixture(scope="module")
def hang_timeout_s(gpu_ray) -> float:
    """The readiness timeout for the hang tests: four times the slower of two healthy replica starts
    here and now, and at least 15 s. The hung replica's replacement must beat the same deadline, and
    a healthy start takes about 2 s on 2 idle cores but 12-16 s beside two busy loops (less when Ray
    hands the actor a worker process it started in advance, hence two)."""
    return max(15.0, 4 * max(healthy_start_s(), healthy_start_s()))


def healthy_start_s() -> float:
    pool = EnginePool(MODEL, PoolConfig(min_replicas=1, max_replicas=1, num_gpus=0), engine_factory=EchoEngine)
    try:
        started = time.monotonic()
        assert eventually(lambda: pool.ready_replicas == 1, timeout=600)
        return time.monotonic() - started
    finally:
        pool.shutdown()


@contextlib.contextmanager
def first_replica_hangs(marker: Path, min_replicas: int, ready_timeout_s: float):
    """A one-replica pool of `HangOnceEngine`s on CPUs, shut down on leaving."""
    config = PoolConfig(min_replicas=min_replicas, max_replicas=1, num_gpus=0, replica_ready_timeout_s=ready_timeout_s)
    pool = EnginePool(MODEL, config, engine_factory=functools.partial(HangOnceEngine, str(marker)))
    try:
        yield pool
    finally:
        pool.shutdown()


class BrokenEngine(EchoEngine):
    """Leaves a file in `folder` per attempt, then fails in its constructor or in every request
    (from the replica's warm-up on), as a missing weight file or a CUDA error would."""

    def __init__(self, folder: str, where: str):
        Path(folder, f"attempt-{os.getpid()}").touch()
        self.where = where
        if where == "constructor":
            raise RuntimeError("no weights at /models/missing")

    def score_labels(self, items, adapter=None, labels=None, zero_shot=False):
        raise RuntimeError("no weights at /models/missing")


def test_the_readiness_timeout_is_a_preset_setting_and_generous_by_default():
    from aar_ray.models.presets import load_preset

    assert PoolConfig().replica_ready_timeout_s >= 600  # a vLLM engine can take many minutes to load
    preset = load_preset("tiny_cpu", **{"engine_pool.replica_ready_timeout_s": 5})
    assert preset.engine_pool.replica_ready_timeout_s == 5


@pytest.mark.slow
def test_a_request_fails_clearly_when_no_replica_can_be_placed(gpu_ray):
    # three GPUs per replica on a cluster of two: Ray never schedules the actor
    pool = EnginePool(MODEL, PoolConfig(min_replicas=1, max_replicas=1, num_gpus=3, replica_ready_timeout_s=3),
                      engine_factory=EchoEngine)
    try:
        [first] = pool.replica_handles()
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"org/tiny-test-model.*replica_ready_timeout_s=3\b.*num_gpus=3"):
            pool.score_labels([{"p": 0.5}])
        assert 3 <= time.monotonic() - started < 3 + SLACK_S
        assert pool.replicas == 1 and pool.replica_handles() != [first]  # the unplaced one was replaced
        assert pool.queue_depth == 0
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_a_replica_that_hangs_while_loading_is_stopped_and_replaced(hang_timeout_s, tmp_path):
    marker = tmp_path / "hung-pid"
    with first_replica_hangs(marker, min_replicas=0, ready_timeout_s=hang_timeout_s) as pool:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="org/tiny-test-model"):  # the only replica hangs
            pool.generate(["q"], max_tokens=1)
        assert hang_timeout_s <= time.monotonic() - started < hang_timeout_s + SLACK_S
        hung = int(marker.read_text())
        # the next request replaces the hung replica (if the first one has not already) and is served
        [pid] = pool.generate(["q"], max_tokens=1)
        assert int(pid) != hung and eventually(lambda: is_gone(hung), timeout=30)
        assert pool.replicas == 1 and pool.ready_replicas == 1 and pool.queue_depth == 0


@pytest.mark.slow
def test_an_idle_pool_replaces_a_replica_that_hangs_while_loading(hang_timeout_s, tmp_path):
    marker = tmp_path / "hung-pid"
    with first_replica_hangs(marker, min_replicas=1, ready_timeout_s=hang_timeout_s) as pool:
        assert eventually(marker.exists, timeout=600)
        hung = int(marker.read_text())
        # no request arrives: the pool itself stops the hung replica and loads another
        assert eventually(lambda: pool.ready_replicas == 1, timeout=2 * hang_timeout_s + SLACK_S)
        assert eventually(lambda: is_gone(hung), timeout=30) and pool.replicas == 1
        [pid] = pool.generate(["q"], max_tokens=1)  # by the replica already loaded
        assert int(pid) != hung and pool.replicas == 1


@pytest.mark.slow
@pytest.mark.parametrize("where, attempts, error", [
    # the actor dies in its constructor: replaced, a few times, then the request fails with the cause
    ("constructor", MAX_FAILED_STARTS, r"(?s)org/tiny-test-model.*in a row failed.*no weights at /models/missing"),
    # the engine loaded and its requests fail: the first batch fails the request with the engine's error
    ("warm-up", 1, "no weights at /models/missing"),
], ids=["constructor", "warm-up"])
def test_an_engine_that_fails_to_load_fails_the_request_with_its_error(gpu_ray, tmp_path, where, attempts, error):
    config = PoolConfig(min_replicas=1, max_replicas=1, num_gpus=0, replica_ready_timeout_s=900)
    pool = EnginePool(MODEL, config, engine_factory=functools.partial(BrokenEngine, str(tmp_path), where))
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=error):
            pool.score_labels([{"p": 0.5}])
        # not until the readiness timeout: three starts take about 6 s idle, 45 s beside busy loops
        assert time.monotonic() - started < 300
        assert len(list(tmp_path.glob("attempt-*"))) == attempts
        assert pool.queue_depth == 0
    finally:
        pool.shutdown()
