"""The causal-LM student and teacher on tiny random-weight Qwen models built from a config
(no download): prompts, label-token scoring, LoRA fits, adapters, offline loading errors."""

import numpy as np
import pandas as pd
import pytest
import torch

from aar_ray.lm.config import CausalLMConfig
from aar_ray.lm.label_lm import LabelLM
from aar_ray.lm.prompts import EncodedPrompt
from aar_ray.lm.weights import WeightsNotFoundError, materialize_tiny_model
from aar_ray.models.causal_lm import CausalLMStudent, CausalLMTeacher
from aar_ray.models.presets import load_preset, preset_names

ANIMALS = "cat dog cow horse bird fish".split()
COLORS = "red blue green yellow black white".split()


def toy_rows():
    """Binary rows whose label is learnable from one token: is the choice an animal?"""
    rows = [{"question": q, "choice": c} for q in ("big", "small") for c in ANIMALS + COLORS]
    return rows, np.array([float(r["choice"] in ANIMALS) for r in rows])


def tiny_config(folder, **overrides):
    settings = dict(model=str(folder), lora_r=4, lora_alpha=8, lr=1e-2, epochs=12, batch_size=8,
                    micro_batch_size=4, gradient_checkpointing=False, max_length=256)
    return CausalLMConfig(**{**settings, **overrides})


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return materialize_tiny_model("qwen3", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def qwen2_chat(tmp_path_factory):
    return materialize_tiny_model("qwen2-chat", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def fitted(qwen3, tmp_path_factory):
    """A student fit on the toy signal, and its saved adapter."""
    rows, y = toy_rows()
    config = tiny_config(qwen3, adapter_uri=str(tmp_path_factory.mktemp("adapters")))
    student = CausalLMStudent({"train": rows}, config, seed=0, name="toy")
    before = student.predict_proba("train")
    student.fit("train", y)
    return student, before, student.save_adapter()


def test_prompts_have_the_sandbox_shapes(qwen3, qwen2_chat):
    binary = {"question": "big", "choice": "cat"}
    comparison = {"prompt": "big", "first": "cat", "second": "red"}
    plain = LabelLM(tiny_config(qwen3)).prompts
    assert plain.text(binary) == "Question: big\nAnswer: cat\nLabel:"
    assert plain.text(comparison) == "Question: big\nAnswer A: cat\nAnswer B: red\nLabel:"
    assert plain.text(binary, zero_shot=True).endswith("Claim: This answer is correct.\n"
                                                      "I think this claim is (True or False):")
    tok = plain.tokenizer  # labels follow "Label:" with no space, as in the sandbox
    assert plain.encode(binary).negative == tok.convert_tokens_to_ids("False")
    assert plain.encode(binary).positive == tok.convert_tokens_to_ids("True")
    assert plain.encode(comparison).positive == tok.convert_tokens_to_ids("A")
    assert plain.encode(comparison).negative == tok.convert_tokens_to_ids("B")
    assert plain.encode(comparison, zero_shot=True).positive == tok.convert_tokens_to_ids("\u0120True")

    chat = LabelLM(tiny_config(qwen2_chat)).prompts
    assert chat.chat  # the tokenizer has a template and the model is not a base model
    assert chat.text(binary) == ("<|im_start|>user\nQuestion: big\nAnswer: cat\nLabel:<|im_end|>\n"
                                 "<|im_start|>assistant\n")
    assert chat.text(binary, zero_shot=True).startswith("Question:")  # zero-shot stays plain text
    assert not LabelLM(tiny_config(qwen2_chat, chat_template=False)).prompts.chat


def test_long_rows_are_cut_in_the_middle_but_keep_the_answer_and_label_line(qwen3, qwen2_chat):
    long_row = {"question": " ".join(["big"] * 150 + ["small"] * 150), "choice": "cat"}
    for folder in (qwen3, qwen2_chat):
        prompts = LabelLM(tiny_config(folder, max_length=40)).prompts
        ids = prompts.encode(long_row).ids
        text = prompts.tokenizer.decode(ids)
        assert len(ids) <= 40
        ending = prompts.text({"question": "small", "choice": "cat"}).split("Question: ")[1]
        assert text.endswith(ending)  # "small\nAnswer: cat\nLabel:" and the chat turn's end survive
        assert text.count("big") > 3 and " ... " in text  # the question keeps its head and tail
    comparison = {"prompt": "red " * 200, "first": "cat " * 200, "second": "dog"}
    prompts = LabelLM(tiny_config(qwen3, max_length=60)).prompts
    text = prompts.tokenizer.decode(prompts.encode(comparison).ids)
    assert len(prompts.encode(comparison).ids) <= 60 and text.endswith("\nAnswer B: dog\nLabel:")
    assert text.count("red") > 5 and text.count("cat") > 5  # both long texts share the budget


def test_label_probabilities_are_the_two_token_softmax_of_the_full_logits(qwen3):
    lm = LabelLM(tiny_config(qwen3))
    rows = [{"question": "big", "choice": "cat"},
            {"prompt": "small red cow", "first": "dog", "second": "fish"},
            {"question": "one two three four five six", "choice": "white"}]
    encoded = [lm.prompts.encode(r) for r in rows]
    with torch.no_grad():
        batched = torch.softmax(lm.label_logits(encoded), dim=-1)
        for p, probs in zip(encoded, batched):
            full = lm.model(torch.tensor([p.ids])).logits[0, -1]
            expected = torch.softmax(full[[p.negative, p.positive]], dim=-1)
            assert torch.allclose(probs, expected, atol=1e-5)  # padding in the batch changes nothing
    assert torch.allclose(batched.sum(-1), torch.ones(3))
    # reading the labels the other way round gives the complement
    swapped = [EncodedPrompt(p.ids, p.positive, p.negative) for p in encoded]
    logit, logit_swapped = lm.predict_logit(encoded), lm.predict_logit(swapped)
    assert np.allclose(logit, -logit_swapped, atol=1e-5)


def test_lora_fit_learns_a_toy_signal(fitted):
    student, before, _ = fitted
    _, y = toy_rows()
    after = student.predict_proba("train")
    assert ((before > 0.5) == y).mean() < 0.8  # random weights: no idea yet
    assert ((after > 0.5) == y).mean() >= 0.9
    assert np.abs(after - y).mean() < np.abs(before - y).mean() - 0.1
    assert np.mean(student.losses[-3:]) < np.mean(student.losses[:3])


def test_adapter_round_trip_gives_identical_predictions(fitted, qwen3, tmp_path):
    student, _, path = fitted
    assert path.endswith("/toy")
    reloaded = CausalLMStudent({"train": toy_rows()[0]}, student.config, seed=1).load_adapter(path)
    assert np.allclose(reloaded.predict_proba("train"), student.predict_proba("train"), atol=1e-6)
    # a URI root goes through pyarrow.fs (s3://, gs:// on a cluster; file:// here)
    uri_config = tiny_config(qwen3, adapter_uri=f"file://{tmp_path}")
    uri_student = CausalLMStudent({"train": toy_rows()[0]}, uri_config)
    uri_student.lm.load_adapter(path)
    location = uri_student.save_adapter("via-uri")
    assert location == f"file://{tmp_path}/via-uri"
    assert (tmp_path / "via-uri" / "adapter_config.json").exists()
    again = CausalLMStudent({"train": toy_rows()[0]}, student.config).load_adapter(location)
    assert np.allclose(again.predict_proba("train"), student.predict_proba("train"), atol=1e-6)


def test_zero_shot_scores_are_the_base_models_prior(fitted, qwen3):
    student, _, _ = fitted
    fresh = CausalLMStudent({"train": toy_rows()[0]}, student.config)
    scores = student.zero_shot_scores("train")
    assert scores.shape == (24,)
    assert np.allclose(scores, fresh.zero_shot_scores("train"), atol=1e-5)  # the adapter is off
    assert not np.allclose(student.predict_proba("train"), fresh.predict_proba("train"), atol=1e-3)


def test_fit_takes_rows_weights_and_a_custom_loss(qwen3):
    rows, y = toy_rows()
    seen = []

    def tracking_loss(logits, targets, progress):
        seen.append((len(targets), progress))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    config = tiny_config(qwen3, epochs=2, batch_size=4, micro_batch_size=2)
    student = CausalLMStudent({"train": pd.DataFrame(rows)}, config)  # the testbed store's frames
    subset = np.arange(0, 24, 3)
    student.fit("train", y[subset], loss=tracking_loss, weights=np.ones(8), rows=subset)
    assert sum(n for n, _ in seen) == 2 * 8  # two epochs over the 8 chosen rows
    progress = [p for _, p in seen]
    assert progress == sorted(progress) and progress[0] == 0 and progress[-1] < 1
    assert student.predict_proba("train", rows=subset).shape == (8,)
    with pytest.raises(ValueError, match="7 targets for 8 rows"):
        student.fit("train", y[:7], rows=subset)


def test_chat_teacher_fits_labelled_rows(qwen2_chat):
    rows, y = toy_rows()
    teacher = CausalLMTeacher(tiny_config(qwen2_chat, epochs=12), seed=0).fit(rows, y)
    p = teacher.predict_proba(rows)
    assert p.shape == (24,) and ((p >= 0) & (p <= 1)).all()
    assert ((p > 0.5) == y).mean() >= 0.9


def test_missing_weights_say_the_hub_is_unreachable_and_name_the_config_key(tmp_path):
    for model in ("Qwen/Qwen3-4B-Base", str(tmp_path / "no-such-weights")):
        with pytest.raises(WeightsNotFoundError, match=r"unreachable.*`hf download .*`model: /path/to/weights`"):
            LabelLM(CausalLMConfig(model=model))


def test_presets_carry_the_study_defaults():
    assert {"qwen_chat", "qwen_math", "qwen_code", "tiny_cpu"} <= set(preset_names())
    for name in ("qwen_chat", "qwen_math", "qwen_code"):
        preset = load_preset(name)
        assert preset.teacher.model == "Qwen/Qwen1.5-0.5B-Chat" and preset.teacher.chat_template
        assert preset.student.model == "Qwen/Qwen3-4B-Base" and preset.student.chat_template is False
        s = preset.student
        assert (s.lora_r, s.lora_alpha, s.lr, s.epochs, s.batch_size, s.schedule, s.max_length) == \
            (32, 32, 1e-4, 5, 32, "linear", 8192)
        pool = preset.engine_pool
        assert pool.engine == "vllm" and 1 <= pool.min_replicas <= pool.max_replicas
    tiny = load_preset("tiny_cpu")
    assert tiny.student.model.startswith("tiny:") and tiny.student.num_gpus == 0
