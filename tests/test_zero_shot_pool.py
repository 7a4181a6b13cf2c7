"""The strong model's zero-shot prior (the sandbox's `ue_zeroshot`) through the shared engine pool:
the library method zero_shot_prior, unchanged, on a causal-LM student whose preset says
`inference: pool`, on a local Ray with two logical GPUs and the tiny CPU model. The pool's
answers must equal the student's own, also when a replica dies in the middle of a request."""

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray
from omegaconf import OmegaConf

from aar_ray.models.presets import PRESET_DIR, load_preset
from aar_ray.engines import BINARY_LABELS, shared_pool_name, start_shared_pool, stop_shared_pool
from aar_ray.experiments import ExperimentSpec, run_method
from aar_ray.methods import parse_method
from aar_ray.models import StudentConfig, TeacherConfig, release_student_pool, student_factory
from aar_ray.lm.config import CausalLMConfig
from aar_ray.models.causal_lm import CausalLMStudent
from aar_ray.testbeds import load_public

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def write_preset(folder: Path, inference: str) -> str:
    """tiny_cpu with `student.inference` set, and a one-replica transformers pool on a logical GPU."""
    preset = OmegaConf.load(PRESET_DIR / "tiny_cpu.yaml")
    preset.student.inference = inference
    preset.student.dtype = "float32"  # the same precision here and in the replica, GPU or not
    preset.engine_pool = {"engine": "transformers", "min_replicas": 1, "max_replicas": 1,
                          "batch_size": 64, "num_gpus": 1, "num_cpus": 1}
    path = folder / f"tiny_{inference}.yaml"
    OmegaConf.save(preset, path)
    return str(path)


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    return {mode: write_preset(folder, mode) for mode in ("local", "pool")}


@pytest.fixture(scope="module")
def pool_name(presets):
    return shared_pool_name(load_preset(presets["pool"]).student)


def zero_shot_prior(home, testbed: str, preset: str):
    name, params = parse_method("zero_shot_prior")
    student = StudentConfig(kind="causal_lm", preset=preset)
    return run_method(ExperimentSpec(testbed, name, 1, str(home), params, student, TeacherConfig()))


@pytest.fixture(scope="module")
def local_prior(small_home, presets):
    """The reference: the same method with the student reading its model in this process."""
    return functools.cache(lambda testbed: zero_shot_prior(small_home, testbed, presets["local"]))


def eventually(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def is_dead(actor) -> bool:
    try:
        ray.get(actor.stats.remote(), timeout=60)
        return False
    except ray.exceptions.RayActorError:
        return True


def test_inference_accepts_local_or_pool_and_says_so():
    named = r"(?s)expected one of \[local, pool\].*full_key: student\.inference"  # the value, then the key
    with pytest.raises(ValueError, match=named):
        load_preset("tiny_cpu", **{"student.inference": "gpu"})
    with pytest.raises(ValueError, match=r"inference='gpu' is not allowed; allowed: local, pool"):
        CausalLMConfig(inference="gpu")
    assert load_preset("tiny_cpu").student.inference == "local"  # CPU default: no pool, no vLLM
    qwen = [load_preset(name) for name in ("qwen_chat", "qwen_math", "qwen_code")]
    assert all(p.student.inference == "pool" and p.engine_pool.engine == "vllm" for p in qwen)
    assert len({shared_pool_name(p.student) for p in qwen}) == 1  # one student model: one pool for all three


def test_without_ray_a_pool_student_reads_its_model_locally(presets):
    assert not ray.is_initialized()  # as inside the sandbox (this test is in the tier without Ray)
    config = load_preset(presets["pool"]).student
    student = CausalLMStudent({"train": [{"question": "big", "choice": "cat"}]}, config)
    with pytest.warns(UserWarning, match="Ray is not running"):
        scores = student.zero_shot_scores("train")
    assert scores.shape == (1,) and np.isfinite(scores[0])  # a log-odds from the local model


def test_zero_shot_prior_through_the_pool_equals_the_local_one(gpu_ray, small_home, presets, pool_name,
                                                                local_prior):
    try:
        served = {}
        for testbed in ("tax-small", "pref-small"):  # binary (with its threshold) and comparison
            pooled = zero_shot_prior(small_home, testbed, presets["pool"])
            local = local_prior(testbed)
            assert pooled.ids == local.ids and local.probs.std() > 0
            assert np.allclose(pooled.probs, local.probs, atol=1e-4)
            served[testbed] = ray.get(ray.get_actor(pool_name).stats.remote())["items_served"]

        # Every read went through the pool the student started by name: test, and for the
        # binary testbed train_unlabel too (the threshold).
        tax, pref = (load_public(t, small_home) for t in ("tax-small", "pref-small"))
        assert served["tax-small"] == len(tax["test"]) + len(tax["train_unlabel"])
        assert served["pref-small"] - served["tax-small"] == len(pref["test"])

        # A student of the same model finds the running pool; its weights never load here, and
        # its predictions before any fit come from the pool too.
        student = student_factory("pref-small", small_home, StudentConfig(kind="causal_lm",
                                                                          preset=presets["pool"]), 1)()
        before = student.predict_proba("test", rows=np.arange(5))
        assert student._lm is None
        reference = CausalLMStudent(pref, load_preset(presets["local"]).student, 1)
        assert np.allclose(before, reference.predict_proba("test", rows=np.arange(5)), atol=1e-5)
        stats = ray.get(ray.get_actor(pool_name).stats.remote())
        assert stats["items_served"] == served["pref-small"] + 5 and stats["replicas"] == 1

        # The pool itself dies (someone stopped it, its node was lost): the student starts a new
        # one under the same name and asks again.
        first = ray.get_actor(pool_name)
        ray.kill(first)
        assert eventually(lambda: is_dead(first), timeout=120)  # ray.kill is asynchronous
        scores = student.zero_shot_scores("test")
        assert ray.get_actor(pool_name)._actor_id != first._actor_id
        assert np.allclose(scores, reference.zero_shot_scores("test"), atol=1e-4)
    finally:
        stop_shared_pool(pool_name)


class GatedEngine:
    """The real transformers engine, except that while the file `hold` exists a batch first
    creates `holding` and waits for `hold` to go: the test then knows that a request is inside
    this replica, and kills it there."""

    def __init__(self, config: CausalLMConfig, folder: str):
        from aar_ray.engines.transformers_engine import TransformersEngine

        self.engine = TransformersEngine(config)
        self.hold, self.holding = Path(folder) / "hold", Path(folder) / "holding"

    def score_labels(self, items, adapter=None, labels=BINARY_LABELS, zero_shot=False):
        if self.hold.exists() and isinstance(items[0], dict):  # rows: a caller's request, not the warm-up
            self.holding.touch()
            deadline = time.monotonic() + 900  # a safety net only: the test opens the gate
            while self.hold.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return self.engine.score_labels(items, adapter, labels, zero_shot)

    def generate(self, prompts, max_tokens, adapter=None):
        return self.engine.generate(prompts, max_tokens, adapter)

    def load_adapter(self, name, path):
        self.engine.load_adapter(name, path)


def test_a_replica_killed_mid_request_is_replaced_and_the_prior_is_unchanged(gpu_ray, small_home, presets,
                                                                            pool_name, local_prior, tmp_path):
    stop_shared_pool(pool_name)  # in case an earlier test left one: this one must be gated
    preset = load_preset(presets["pool"])
    hold, holding = tmp_path / "hold", tmp_path / "holding"
    hold.touch()
    # Started here under the name the student derives, so the student finds it (get_if_exists).
    pool = start_shared_pool(pool_name, preset.student, preset.engine_pool,
                             engine_factory=functools.partial(GatedEngine, preset.student, str(tmp_path)))
    try:
        with ThreadPoolExecutor(1) as background:
            running = background.submit(zero_shot_prior, small_home, "tax-small", presets["pool"])
            try:
                # generous: a replica's engine starts slowly on a busy machine
                assert eventually(lambda: holding.exists() or running.done(), timeout=600)
                assert not running.done(), running.exception()
                [victim] = ray.get(pool.replica_handles.remote())
                ray.kill(victim)
                with pytest.raises(ray.exceptions.RayActorError):  # dead before the gate opens
                    ray.get(victim.ready.remote(), timeout=300)
            finally:
                hold.unlink(missing_ok=True)  # the replacement serves at once; nothing waits on a failure
            pooled = running.result(timeout=600)
        [replacement] = ray.get(pool.replica_handles.remote())
        assert replacement._actor_id != victim._actor_id
    finally:
        stop_shared_pool(pool_name)
    with pytest.raises(ValueError):  # stopped means the name is free: the next start is a new pool
        ray.get_actor(pool_name)
    local = local_prior("tax-small")
    assert pooled.ids == local.ids and np.allclose(pooled.probs, local.probs, atol=1e-4)


def test_releasing_the_students_pool_gives_its_gpus_back(gpu_ray, presets, pool_name):
    # What a sweep or campaign does when it ends (the pool is detached, so nothing else would).
    preset = load_preset(presets["pool"])
    start_shared_pool(pool_name, preset.student, preset.engine_pool, detached=True)
    assert eventually(lambda: gpu_ray.available_resources().get("GPU", 0) < 2, timeout=120)
    assert release_student_pool(StudentConfig(kind="causal_lm", preset=presets["pool"]))
    with pytest.raises(ValueError):
        gpu_ray.get_actor(pool_name)
    assert eventually(lambda: gpu_ray.available_resources().get("GPU", 0) == 2, timeout=120)
    assert not release_student_pool(StudentConfig(kind="causal_lm", preset=presets["local"]))
