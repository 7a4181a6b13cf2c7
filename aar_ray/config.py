"""Typed configs: OmegaConf structured configs built from dataclasses, defaults in `conf/`.

`load_config(Schema, path, overrides)` merges the dataclass defaults, a YAML file and
`key=value` overrides, and fails with a `ConfigError` that names the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from aar_ray.methods import METHODS, MethodSpecError, parse_method
from aar_ray.models.student import HEADS, LOSSES, StudentConfig
from aar_ray.models.teacher import TeacherConfig
from aar_ray.scoring.scorer import ScorerConfig

T = TypeVar("T")


class ConfigError(ValueError):
    pass


@dataclass
class TrackingConfig:
    uri: str = ""  # empty: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "aar-baselines"


def _all_methods() -> list[str]:
    return ["vanilla_w2s", "vanilla_w2s:loss=soft", "confident_only", "aux_confidence",
            "self_training", "zero_shot_prior"]


@dataclass
class BaselineConfig:
    """A sweep of library methods over testbeds and seeds (`aar baseline`)."""

    home: str = ".aar"  # testbeds, sealed labels and caches live here
    testbeds: list[str] = field(default_factory=lambda: ["sentiment", "taxonomy", "preference"])
    methods: list[str] = field(default_factory=_all_methods)  # name or name:key=value,...
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    submitter: str = "baseline"  # whose scorer budget the sweep spends
    experiment_gpus: float = 0.0  # GPUs each experiment task holds (causal_lm students on a cluster)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _allowed_keys(schema: type, dotted: str) -> list[str]:
    """The field names of the dataclass that holds `dotted` (a.b.c -> the fields of a.b)."""
    node = schema()
    for part in dotted.split(".")[:-1]:
        node = getattr(node, part, None)
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    base = OmegaConf.structured(schema)
    try:
        layers = [base]
        if path is not None:
            if not Path(path).exists():
                raise ConfigError(f"config file {path} not found")
            layers.append(OmegaConf.load(path))
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        allowed = ", ".join(_allowed_keys(schema, key))
        raise ConfigError(f"unknown config key '{key}'; allowed here: {allowed}") from None
    except OmegaConfBaseException as err:
        first_line = str(err).splitlines()[0]
        raise ConfigError(f"bad value for '{err.full_key}': {first_line}") from None
    config = OmegaConf.to_object(merged)
    validate(config)
    return config


def _check(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def validate(config) -> None:
    """Checks OmegaConf's types cannot express: names that must exist in a registry."""
    if isinstance(config, BaselineConfig):
        for i, spec in enumerate(config.methods):
            try:
                parse_method(spec)
            except MethodSpecError as err:
                raise ConfigError(f"methods[{i}]: {err}") from None
        if not config.seeds or not config.testbeds or not config.methods:
            raise ConfigError("testbeds, methods and seeds must each list at least one entry")
    if hasattr(config, "student"):
        _check("student.head", config.student.head, ["auto", *HEADS])
        _check("student.kind", config.student.kind, ["encoder", "causal_lm"])
        _check("teacher.kind", config.teacher.kind, ["bow", "causal_lm"])
        for part in (config.student, config.teacher):
            if part.kind == "causal_lm" and not part.preset:
                raise ConfigError("a causal_lm student or teacher needs a preset, e.g. "
                                  "student.preset=qwen_math (conf/models/)")
    if hasattr(config, "backend"):
        _check("backend.kind", config.backend.kind, ["search", "anthropic", "openai"])
        if config.researchers < 1:
            raise ConfigError("researchers must be at least 1")


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


__all__ = ["BaselineConfig", "ConfigError", "LOSSES", "METHODS", "TrackingConfig", "load_config",
           "to_yaml"]
