"""Students and teachers behind one contract, at every scale.

Student: `fit(split, targets, loss, weights, rows)` on P(True)/P(A) targets, soft or hard, and
`predict_proba(split, rows)`; `zero_shot_scores(split)` gives its prior without training.
Teacher: `fit(rows, labels)` and `predict_proba(rows)`.
`student_factory` is the one place that turns a config and a testbed into students.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from aar_ray.models.artifacts import testbed_vectors
from aar_ray.models.student import HEADS, EncoderStudent, StudentConfig
from aar_ray.models.teacher import BowTeacher, TeacherConfig
from aar_ray.testbeds import load_public, testbed_meta


def resolve_student_config(config: StudentConfig, testbed: str, home: Path) -> StudentConfig:
    """`head: auto` becomes the head the testbed recommends (an MLP for imported testbeds)."""
    if config.head != "auto":
        return config
    return replace(config, head=testbed_meta(testbed, home).get("student_head", "mlp"))


def student_factory(testbed: str, home: Path, config: StudentConfig,
                    seed: int) -> Callable[[], EncoderStudent]:
    """Fresh untrained students for one testbed and seed; the vectors are loaded once.
    `kind: causal_lm` gives the Qwen-scale student of a model preset, same contract; with the
    preset's `student.inference: pool` its base-model reads go through the preset's `engine_pool`."""
    if config.kind == "causal_lm":
        from aar_ray.models.presets import load_preset
        from aar_ray.models.causal_lm import CausalLMStudent

        preset = load_preset(config.preset, home)
        rows = {split: frame.to_dict("records") for split, frame in load_public(testbed, home).items()}
        return lambda: CausalLMStudent(rows, preset.student, seed, pool_config=preset.engine_pool)
    config = resolve_student_config(config, testbed, home)
    vectors = testbed_vectors(testbed, home, config.encoder)
    return lambda: EncoderStudent(vectors, config, seed)


__all__ = ["HEADS", "BowTeacher", "EncoderStudent", "StudentConfig", "TeacherConfig",
           "resolve_student_config", "student_factory"]


def release_student_pool(config: StudentConfig) -> bool:
    """Stop the shared engine pool that `inference: pool` students of this config started, so
    its GPUs go back to the cluster when a campaign or sweep ends. False if there was none."""
    if config.kind != "causal_lm":
        return False
    from aar_ray.models.presets import load_preset
    from aar_ray.engines.pool import shared_pool_name, stop_shared_pool

    preset = load_preset(config.preset)
    return preset.student.inference == "pool" and stop_shared_pool(shared_pool_name(preset.student))
