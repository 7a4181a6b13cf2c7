"""The method library, unchanged, on the causal-LM path: teacher and student are LoRA-tuned
causal LMs of a model preset (here the tiny CPU one; qwen_* on a GPU cluster)."""

import numpy as np
import pytest

from aar_ray.config import BaselineConfig, load_config
from aar_ray.experiments import ExperimentSpec, run_method
from aar_ray.errors import ConfigError
from aar_ray.methods import parse_method
from aar_ray.models import StudentConfig, TeacherConfig
from aar_ray.testbeds import load_public

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
STUDENT = StudentConfig(kind="causal_lm", preset="tiny_cpu")
TEACHER = TeacherConfig(kind="causal_lm", preset="tiny_cpu")


@pytest.mark.parametrize("method", ["vanilla_w2s", "confident_only:low=0.45,high=0.55", "zero_shot_prior"])
def test_library_methods_run_on_causal_lm_students_and_teachers(small_home, method):
    name, params = parse_method(method)
    result = run_method(ExperimentSpec("pref-small", name, 1, str(small_home), params, STUDENT, TEACHER))
    assert result.ids == load_public("pref-small", small_home)["test"]["id"].tolist()
    assert np.all((result.probs >= 0) & (result.probs <= 1)) and result.probs.std() > 0


def test_a_causal_lm_student_needs_a_preset():
    with pytest.raises(ConfigError, match="needs a preset"):
        load_config(BaselineConfig, None, ["student.kind=causal_lm"])
