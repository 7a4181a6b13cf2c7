"""Weights that are not on this machine are refused at once, in words that say what to do:
before Ray or any testbed work, naming the preset, the key and the current download command."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aar_ray.lm.weights import WeightsNotFoundError, check_weights
from aar_ray.models.presets import PresetNotFoundError, check_preset_weights, load_preset

AAR = str(Path(sys.executable).parent / "aar")


def test_a_hub_model_missing_from_the_cache_names_the_key_and_hf_download():
    with pytest.raises(WeightsNotFoundError) as refused:
        check_preset_weights("qwen_math", "student")
    message = str(refused.value)
    assert "model preset 'qwen_math': student.model='Qwen/Qwen3-4B-Base'" in message
    assert "`hf download Qwen/Qwen3-4B-Base --local-dir /models/Qwen3-4B-Base`" in message
    assert "huggingface-cli" not in message  # no longer shipped by huggingface_hub


@pytest.mark.parametrize("model, says", [
    ("tiny:llama", r"student.model='tiny:llama': unknown tiny model; known: tiny:qwen2-chat, tiny:qwen3"),
    ("/no/such/folder", r"student.model='/no/such/folder' is not available locally"),
])
def test_other_missing_models_name_the_key(model, says):
    with pytest.raises(WeightsNotFoundError, match=says):
        check_weights(model, key="student.model")


def test_a_folder_without_a_config_is_refused(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        check_weights(str(tmp_path), key="teacher.model")


def test_presets_whose_weights_ship_with_the_install_pass():
    for name in ("tiny_cpu", "smollm2"):
        for role in ("student", "teacher"):
            check_preset_weights(name, role)
    with pytest.raises(PresetNotFoundError, match="known: .*smollm2.*tiny_cpu"):
        load_preset("qwen_huge")


@pytest.mark.slow  # a subprocess
def test_the_cli_refuses_a_preset_without_weights_in_seconds_before_any_work(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "AAR_HOME": str(home)}
    start = time.monotonic()
    done = subprocess.run([AAR, "baseline", "--testbed", "taxonomy", "student.kind=causal_lm",
                           "student.preset=qwen_math", "teacher.kind=causal_lm", "teacher.preset=qwen_math"],
                          capture_output=True, text=True, env=env, timeout=120)
    seconds = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("aar baseline: error: model preset 'qwen_math': student.model=")
    assert "hf download" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert seconds < 30  # was about 4 minutes: Ray, then testbed embeddings, then an actor's traceback
    assert not home.exists() or not any(home.iterdir())  # no testbed, no Ray session, no store
