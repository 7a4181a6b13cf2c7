"""Inference engines: the transformers engine against the student, and the Ray engine pool
(scaling, batching, adapters, tensor-parallel placement) on a local Ray with GPUs declared as
logical resources. The real vLLM engine is tested in test_vllm_real.py."""

import os
import time

import numpy as np
import pytest
import ray
import torch

from aar_ray.engines import (EnginePool, PoolConfig, TransformersEngine, desired_replicas,
                             start_shared_pool, two_way_probability)
from aar_ray.lm.config import CausalLMConfig
from aar_ray.lm.weights import materialize_tiny_model
from aar_ray.models.causal_lm import CausalLMStudent

ANIMALS = "cat dog cow horse bird fish".split()
COLORS = "red blue green yellow black white".split()
ROWS = [{"question": q, "choice": c} for q in ("big", "small") for c in ANIMALS + COLORS]
TARGETS = np.array([float(r["choice"] in ANIMALS) for r in ROWS])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = materialize_tiny_model("qwen3", tmp_path_factory.mktemp("models"))
    return CausalLMConfig(model=str(folder), lora_r=4, lora_alpha=8, lr=1e-2, epochs=4, batch_size=8,
                          micro_batch_size=8, gradient_checkpointing=False, max_length=128,
                          adapter_uri=str(tmp_path_factory.mktemp("adapters")))


@pytest.fixture(scope="module")
def student(tiny):
    fitted = CausalLMStudent({"train": ROWS}, tiny, seed=0, name="served").fit("train", TARGETS)
    fitted.save_adapter()
    return fitted


def eventually(condition, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def free_gpus_become(n) -> bool:
    # Ray returns a killed actor's resources asynchronously: wait for the count to settle.
    return eventually(lambda: ray.available_resources().get("GPU", 0) == n)


# --------------------------------------------------------------------------- policy

@pytest.mark.parametrize("queue, expected", [(0, 1), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (100, 3)])
def test_desired_replicas_follow_the_queue_within_bounds(queue, expected):
    assert desired_replicas(queue, target_queue_per_replica=4, min_replicas=1, max_replicas=3) == expected


def test_desired_replicas_may_scale_to_zero():
    assert desired_replicas(0, 4, min_replicas=0, max_replicas=2) == 0
    assert desired_replicas(1, 4, min_replicas=0, max_replicas=2) == 1


def test_a_pool_that_could_never_serve_is_refused():
    with pytest.raises(ValueError, match="max_replicas"):
        EnginePool(None, PoolConfig(min_replicas=0, max_replicas=0), engine_factory=EchoEngine)


# --------------------------------------------------------------------------- engines

@pytest.mark.slow
def test_transformers_engine_serves_an_adapter_by_name_like_the_student(tiny, student):
    engine = TransformersEngine(tiny)
    base = CausalLMStudent({"train": ROWS}, tiny).predict_proba("train")
    assert np.allclose(engine.score_labels(ROWS), base, atol=1e-5)
    engine.load_adapter("served", student.adapter_path)
    assert np.allclose(engine.score_labels(ROWS, adapter="served"), student.predict_proba("train"), atol=1e-5)
    assert np.allclose(engine.score_labels(ROWS), base, atol=1e-5)  # the base model is still there
    # a formatted prompt with its label strings scores like the row it came from
    prompt = engine.lm.prompts.text(ROWS[0])
    assert np.allclose(engine.score_labels([prompt], "served", labels=("False", "True")),
                       student.predict_proba("train")[:1], atol=1e-5)
    # zero-shot: the base model on the claim prompt, whatever adapter the engine holds
    zero_shot = engine.score_labels(ROWS, zero_shot=True)
    assert np.allclose(zero_shot, two_way_probability(0, student.zero_shot_scores("train")), atol=1e-5)
    assert not np.allclose(zero_shot, base, atol=1e-3)  # a different prompt, not the fine-tuning one
    texts = engine.generate(["Question: big"], max_tokens=3, adapter="served")
    assert len(texts) == 1 and isinstance(texts[0], str)
    with pytest.raises(KeyError, match="no adapter 'missing'"):
        engine.score_labels(ROWS, adapter="missing")


# --------------------------------------------------------------------------- the pool

class EchoEngine:
    """A cheap engine: P = the row's "p" field; generate tells which process and adapters served."""

    def __init__(self, load_seconds=0.0):
        time.sleep(load_seconds)
        self.adapters = {}

    def score_labels(self, items, adapter=None, labels=None, zero_shot=False):
        time.sleep(0.05)
        return np.array([x["p"] if isinstance(x, dict) else 0.5 for x in items], dtype=np.float32)  # str: warm-up

    def generate(self, prompts, max_tokens, adapter=None):
        time.sleep(0.2)
        return [f"{os.getpid()}|{sorted(self.adapters)}|{p}" for p in prompts]

    def load_adapter(self, name, path):
        self.adapters[name] = path


@pytest.mark.slow
def test_pool_grows_with_the_queue_keeps_order_and_shrinks_when_idle(gpu_ray):
    config = PoolConfig(min_replicas=1, max_replicas=2, target_queue_per_replica=2, batch_size=2,
                        num_gpus=1, scale_down_after_s=0)
    pool = EnginePool(None, config, engine_factory=EchoEngine)
    try:
        assert pool.replicas == 1
        items = [{"p": i / 100} for i in range(30)]
        assert np.allclose(pool.score_labels(items), [i / 100 for i in range(30)])  # in order
        # 60 batches of 0.2 s: a second replica starts, loads, and takes part of the same request.
        # 12 s of queue on one replica: a new Ray worker starts well within that on a loaded machine.
        texts = pool.generate([f"q{i}" for i in range(120)], max_tokens=4)
        assert [t.split("|")[-1] for t in texts] == [f"q{i}" for i in range(120)]
        assert len({t.split("|")[0] for t in texts}) == 2
        assert pool.queue_depth == 0 and pool.replicas == 1  # back to the minimum once idle
        assert free_gpus_become(1)  # which holds one GPU
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_an_idle_pool_gives_its_gpus_back_without_another_request(gpu_ray):
    config = PoolConfig(min_replicas=0, max_replicas=1, batch_size=8, num_gpus=1, scale_down_after_s=0.5)
    pool = EnginePool(None, config, engine_factory=EchoEngine)
    try:
        assert pool.replicas == 0 and free_gpus_become(2)
        assert np.allclose(pool.score_labels([{"p": 0.25}]), [0.25])
        assert pool.replicas == 1  # kept for scale_down_after_s in case more requests come
        assert eventually(lambda: pool.replicas == 0, timeout=30) and free_gpus_become(2)
    finally:
        pool.shutdown()


class EnvEngine(EchoEngine):
    """generate answers with the replica process's AAR_REPLICA_SETTING."""

    def generate(self, prompts, max_tokens, adapter=None):
        return [os.environ.get("AAR_REPLICA_SETTING", "unset") for _ in prompts]


@pytest.mark.slow
def test_replicas_run_with_the_pools_environment(gpu_ray):
    # what a CPU vLLM replica needs (e.g. VLLM_CPU_KVCACHE_SPACE), from the preset's engine_pool.env
    pool = EnginePool(None, PoolConfig(min_replicas=1, max_replicas=1, num_gpus=0,
                                       env={"AAR_REPLICA_SETTING": "from-the-pool"}), engine_factory=EnvEngine)
    try:
        assert pool.generate(["q"], max_tokens=1) == ["from-the-pool"]
        assert os.environ.get("AAR_REPLICA_SETTING") is None  # the caller's own environment is untouched
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_new_replicas_get_every_registered_adapter(gpu_ray):
    config = PoolConfig(min_replicas=1, max_replicas=2, target_queue_per_replica=1, batch_size=1,
                        num_gpus=0, scale_down_after_s=60)
    pool = EnginePool(None, config, engine_factory=EchoEngine)
    try:
        pool.load_adapter("weak-labels-v1", "/adapters/v1")
        pool.generate(["a", "b"], max_tokens=1)  # a queue of two: a second replica starts
        assert pool.replicas == 2 and eventually(lambda: pool.ready_replicas == 2)  # and stays a while
        texts = pool.generate(["c", "d", "e", "f"], max_tokens=1)
        assert all("['weak-labels-v1']" in t for t in texts)  # loaded before it served anything
        assert len({t.split("|")[0] for t in texts}) == 2
    finally:
        pool.shutdown()


class CrashOnceEngine(EchoEngine):
    """Its process dies on the first item that asks for it, as an engine crash would."""

    def score_labels(self, items, adapter=None, labels=None, zero_shot=False):
        marker = items[0].get("crash")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return super().score_labels(items, adapter, labels, zero_shot)


@pytest.mark.slow
def test_a_replica_that_dies_is_replaced_and_its_batch_sent_again(gpu_ray, tmp_path):
    pool = EnginePool(None, PoolConfig(min_replicas=1, max_replicas=1, batch_size=1, num_gpus=0),
                      engine_factory=CrashOnceEngine)
    try:
        items = [{"p": 0.1}, {"p": 0.2, "crash": str(tmp_path / "crashed")}, {"p": 0.3}]
        assert np.allclose(pool.score_labels(items), [0.1, 0.2, 0.3])
        assert (tmp_path / "crashed").exists() and pool.replicas == 1
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_tensor_parallel_replica_reserves_its_gpus_in_a_placement_group(gpu_ray):
    pool = EnginePool(None, PoolConfig(min_replicas=1, max_replicas=1, tensor_parallel=2),
                      engine_factory=EchoEngine)
    try:
        assert np.allclose(pool.score_labels([{"p": 0.25}]), [0.25])
        assert free_gpus_become(0)  # both GPUs held by the replica's placement group
    finally:
        pool.shutdown()
    assert free_gpus_become(2)


@pytest.mark.slow
def test_shared_pool_actor_and_a_real_transformers_replica(gpu_ray, tiny, student):
    pool = start_shared_pool("test-pool", tiny, PoolConfig(engine="transformers", num_gpus=0, batch_size=8))
    try:
        assert ray.get_actor("test-pool")  # reachable by name from any researcher
        ray.get(pool.load_adapter.remote("served", student.adapter_path))
        served = ray.get(pool.score_labels.remote(ROWS, "served"))
        assert np.allclose(served, student.predict_proba("train"), atol=1e-5)
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)
