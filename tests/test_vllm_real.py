"""The real vLLM engine (its CPU build, as ./setup.sh installs it without a GPU) against the
transformers engine, on a tiny random-weight model: label scores on binary, comparison and
zero-shot rows with and without LoRA adapters, adapter swaps, precision and memory settings, and
the Ray engine pool serving vLLM replicas (scaling 1 -> 2 -> 1, a replica killed mid-request).

One vLLM engine is shared by the module's engine tests (it takes seconds to start, a GiB of KV
cache); the pool tests start their own replicas."""

import json
import threading
import time

import numpy as np
import pytest
import ray

from aar_ray.engines import EnginePool, PoolConfig, TransformersEngine
from aar_ray.engines.vllm_engine import GIB, VLLMEngine, memory_args, vllm_dtype
from aar_ray.lm.config import CausalLMConfig
from aar_ray.lm.weights import materialize_tiny_model
from aar_ray.models.causal_lm import CausalLMStudent

ANIMALS = "cat dog cow horse bird fish".split()
COLORS = "red blue green yellow black white".split()
BINARY = [{"question": q, "choice": c} for q in ("big", "small") for c in ANIMALS + COLORS]
COMPARISON = [{"prompt": q, "first": a, "second": b} for q in ("big", "small")
              for a, b in zip(ANIMALS, COLORS)]
TARGETS = np.array([float(r["choice"] in ANIMALS) for r in BINARY])
AGREE = 1e-4  # float32 on both sides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # a real vLLM engine


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = materialize_tiny_model("qwen3", tmp_path_factory.mktemp("models"))
    return CausalLMConfig(model=str(folder), lora_r=4, lora_alpha=8, lr=1e-2, epochs=4, batch_size=8,
                          micro_batch_size=8, gradient_checkpointing=False, max_length=128, dtype="float32",
                          adapter_uri=str(tmp_path_factory.mktemp("adapters")))


@pytest.fixture(scope="module")
def adapters(tiny):
    """Two fitted adapters of the tiny model: `animals` (animals are True) and its opposite."""
    paths = {}
    for name, targets in (("animals", TARGETS), ("colours", 1 - TARGETS)):
        student = CausalLMStudent({"train": BINARY}, tiny, seed=0, name=name).fit("train", targets)
        paths[name] = student.save_adapter()
    return paths


@pytest.fixture(scope="module")
def reference(tiny):
    return TransformersEngine(tiny)


@pytest.fixture(scope="module")
def engine(tiny):
    # gpu_memory_utilization stays at its GPU default (0.85): on a CPU it would ask for 85% of all
    # RAM and fail; the engine must take its fixed CPU KV cache instead.
    return VLLMEngine(tiny, gpu_memory_utilization=0.85, max_loras=2, cpu_kv_cache_gib=0.25)


@pytest.mark.parametrize("rows, zero_shot", [(BINARY, False), (COMPARISON, False), (BINARY, True),
                                             (COMPARISON, True)],
                         ids=["binary", "comparison", "binary-zero-shot", "comparison-zero-shot"])
def test_vllm_scores_rows_like_the_transformers_engine(engine, reference, rows, zero_shot):
    got = engine.score_labels(rows, zero_shot=zero_shot)
    assert got.shape == (len(rows),) and np.all((got > 0) & (got < 1))
    assert np.abs(got - reference.score_labels(rows, zero_shot=zero_shot)).max() <= AGREE


def test_vllm_serves_lora_adapters_like_the_transformers_engine(engine, reference, adapters):
    for name, path in adapters.items():
        engine.load_adapter(name, path)
        reference.load_adapter(name, path)
    base = engine.score_labels(BINARY)
    for name in adapters:
        for rows in (BINARY, COMPARISON):
            got = engine.score_labels(rows, adapter=name)
            assert np.abs(got - reference.score_labels(rows, adapter=name)).max() <= AGREE
    animals = engine.score_labels(BINARY, adapter="animals")
    assert np.abs(animals - base).max() > 0.05  # the adapter is applied, not the base model
    # the fitted adapter learned its rows; the base model did not
    assert np.mean((animals > 0.5) == TARGETS.astype(bool)) > np.mean((base > 0.5) == TARGETS.astype(bool))
    assert np.allclose(engine.score_labels(BINARY), base, atol=AGREE)  # the base is still served
    with pytest.raises(KeyError, match="no adapter 'missing'"):
        engine.score_labels(BINARY, adapter="missing")


def test_new_weights_under_an_old_adapter_name_are_served(engine, reference, adapters):
    engine.load_adapter("current", adapters["animals"])
    before = engine.score_labels(BINARY, adapter="current")
    engine.load_adapter("current", adapters["colours"])  # vLLM caches by id: the engine must not serve the old one
    reference.load_adapter("colours", adapters["colours"])
    after = engine.score_labels(BINARY, adapter="current")
    assert np.abs(after - before).max() > 0.05
    assert np.abs(after - reference.score_labels(BINARY, adapter="colours")).max() <= AGREE


def test_vllm_generates_text_from_a_prompt(engine, adapters):
    engine.load_adapter("animals", adapters["animals"])
    texts = engine.generate(["Question: big cat", "Question: red"], max_tokens=4, adapter="animals")
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def test_the_engine_runs_in_the_configured_precision(engine, tiny, tmp_path):
    assert engine.dtype == "float32"
    assert str(engine.llm.llm_engine.model_config.dtype) == "torch.float32"
    # auto: the checkpoint's own dtype (vLLM's own auto would read a float32 checkpoint as float16)
    folder = tmp_path / "bf16"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert vllm_dtype(CausalLMConfig(model=str(folder), dtype="auto"), str(folder)) == "bfloat16"
    auto = CausalLMConfig(model=tiny.model, dtype="auto")
    assert vllm_dtype(auto, tiny.model) == "float32"
    with pytest.raises(ValueError, match=r"dtype='fp8'.*allowed: auto, float32, bfloat16, float16"):
        vllm_dtype(CausalLMConfig(model=tiny.model, dtype="fp8"), tiny.model)


def test_a_cpu_engine_takes_a_fixed_kv_cache_not_a_share_of_all_ram(engine):
    assert memory_args(0.85, 0.25) == {"kv_cache_memory_bytes": GIB // 4}
    assert engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == GIB // 4


# --------------------------------------------------------------------------- the pool, on vLLM

@pytest.fixture(scope="module")
def vllm_ray(request):
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def eventually(condition, timeout) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


POOL = dict(engine="vllm", num_gpus=0, num_cpus=1, cpu_kv_cache_gib=0.25, batch_size=2)


def test_a_vllm_pool_grows_to_two_replicas_under_load_and_back_to_one(vllm_ray, tiny, reference):
    pool = EnginePool(tiny, PoolConfig(**POOL, min_replicas=1, max_replicas=2, target_queue_per_replica=2,
                                       scale_down_after_s=2))
    try:
        assert eventually(lambda: pool.ready_replicas == 1, timeout=300)  # ready: after a warm-up request
        rows = BINARY * 4
        got = pool.score_labels(rows)  # 24 batches of 2: the queue asks for a second replica
        assert pool.replicas == 2
        assert np.abs(got - reference.score_labels(rows)).max() <= AGREE  # in order, as vLLM scores them
        assert eventually(lambda: pool.replicas == 1, timeout=60)  # idle: back to min_replicas
        assert np.abs(pool.score_labels(BINARY[:3]) - reference.score_labels(BINARY[:3])).max() <= AGREE
    finally:
        pool.shutdown()


def test_a_vllm_replica_killed_mid_request_is_replaced_and_the_answer_is_whole(vllm_ray, tiny, reference,
                                                                               adapters):
    pool = EnginePool(tiny, PoolConfig(**POOL, min_replicas=1, max_replicas=1, scale_down_after_s=300))
    try:
        pool.load_adapter("animals", adapters["animals"])
        reference.load_adapter("animals", adapters["animals"])
        assert eventually(lambda: pool.ready_replicas == 1, timeout=300)
        [victim] = pool.replica_handles()
        rows = BINARY * 20  # 120 batches: still running when the replica dies
        answer = {}
        request = threading.Thread(target=lambda: answer.update(p=pool.score_labels(rows, adapter="animals")))
        request.start()
        assert eventually(lambda: pool.stats()["queue_depth"] > 0, timeout=30)
        ray.kill(victim)
        request.join(timeout=600)
        assert not request.is_alive()
        [replacement] = pool.replica_handles()
        assert replacement._actor_id != victim._actor_id
        # the replacement got the adapter too, and every row was answered once, in order
        assert np.abs(answer["p"] - reference.score_labels(rows, adapter="animals")).max() <= AGREE
    finally:
        pool.shutdown()
