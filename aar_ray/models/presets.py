"""Model presets (conf/models/*.yaml): the teacher's and the student's causal-LM settings and the
inference-engine pool that serves the student's base model, checked against their dataclasses
(a misspelt key fails). Importing this module loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from aar_ray.engines.pool import PoolConfig
from aar_ray.errors import UserError
from aar_ray.lm.config import CausalLMConfig
from aar_ray.lm.weights import check_weights
from aar_ray.resources import conf_dir

PRESET_DIR = conf_dir() / "models"


class PresetNotFoundError(UserError, FileNotFoundError):
    """No model preset of that name or path."""


@dataclass
class ModelPreset:
    teacher: CausalLMConfig = field(default_factory=CausalLMConfig)
    student: CausalLMConfig = field(default_factory=CausalLMConfig)
    engine_pool: PoolConfig = field(default_factory=PoolConfig)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | Path, home: str | Path | None = None, **overrides) -> ModelPreset:
    """A preset by name (conf/models/<name>.yaml) or path; `overrides` are dotted keys,
    e.g. load_preset("qwen_math", **{"student.model": "/models/Qwen3-4B-Base"}). With `home`, a
    relative `adapter_uri` is a folder of that aar home (shared by every node), never of the
    working directory, which in a Ray job is a temporary copy."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise PresetNotFoundError(f"no model preset {str(name_or_path)!r} (student.preset / teacher.preset); "
                                  f"known: {', '.join(preset_names())}, or a path to a .yaml file")
    merged = OmegaConf.merge(OmegaConf.structured(ModelPreset), OmegaConf.load(path),
                             OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    preset = OmegaConf.to_object(merged)
    if home is not None:
        for role in (preset.student, preset.teacher):
            if "://" not in role.adapter_uri and not Path(role.adapter_uri).expanduser().is_absolute():
                role.adapter_uri = str(Path(home) / role.adapter_uri)
    return preset


def check_preset_weights(name_or_path: str | Path, role: str) -> None:
    """Fail now, naming the preset and key, if the `role` ("student" or "teacher") model of a
    preset is not on this machine: a run must not find out minutes later inside a Ray actor."""
    preset = load_preset(name_or_path)
    model = getattr(preset, role).model
    check_weights(model, key=f"{role}.model", preset=str(name_or_path))
