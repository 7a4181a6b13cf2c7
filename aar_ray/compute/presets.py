"""Model presets (conf/models/*.yaml): teacher and student model settings, the inference-engine
pool and the fit tasks' Ray options, checked against their dataclasses (a misspelt key fails)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from aar_ray.compute.tasks import ComputeConfig
from aar_ray.engines.pool import PoolConfig
from aar_ray.models.causal_lm import CausalLMConfig

PRESET_DIR = Path(__file__).resolve().parents[2] / "conf" / "models"


@dataclass
class ModelPreset:
    teacher: CausalLMConfig = field(default_factory=CausalLMConfig)
    student: CausalLMConfig = field(default_factory=CausalLMConfig)
    engine_pool: PoolConfig = field(default_factory=PoolConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | Path, **overrides) -> ModelPreset:
    """A preset by name (conf/models/<name>.yaml) or path; `overrides` are dotted keys,
    e.g. load_preset("qwen_math", **{"student.model": "/models/Qwen3-4B-Base"})."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no model preset {name_or_path!r}; known: {preset_names()}")
    merged = OmegaConf.merge(OmegaConf.structured(ModelPreset), OmegaConf.load(path),
                             OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    return OmegaConf.to_object(merged)
