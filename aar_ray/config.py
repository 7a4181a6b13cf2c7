"""Typed configs: OmegaConf structured configs built from dataclasses, defaults in `conf/`.

`load_config(Schema, path, overrides)` merges the dataclass defaults, a YAML file and
`key=value` overrides, and fails with a `ConfigError` that names the key and what is allowed.

It also fixes where state lives, once: `home` becomes an absolute path (aar_ray.home's
`resolve_home`) and an empty `tracking.uri` becomes the home's MLflow store
(`resolve_tracking_uri`), so everything below the entry point gets absolute locations and never
depends on its working directory, which inside a Ray job is Ray's temporary copy of the working
tree. `ConfigError` (from aar_ray.home) names the key and what is wrong with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from aar_ray.errors import ConfigError
from aar_ray.home import in_ray_job, resolve_home
from aar_ray.methods import METHODS, MethodSpecError, parse_method
from aar_ray.models.student import HEADS, LOSSES, StudentConfig
from aar_ray.models.teacher import TeacherConfig
from aar_ray.scoring.scorer import ScorerConfig

T = TypeVar("T")


# --------------------------------------------------------------------------- where state lives
# The home itself (`resolve_home`) is resolved in aar_ray.home; here, the other locations.


def resolve_store_url(url: str, key: str) -> str:
    """A `sqlite:///relative.db` URL made absolute like a relative home (refused inside a Ray
    job); any other URL (sqlite:////abs, postgresql://, http://) unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/"):
        return url
    relative = url[len(prefix):]
    if in_ray_job():
        raise ConfigError(
            f"{key}={url!r} names a relative sqlite file, and this process runs inside a Ray job, "
            "whose working directory is deleted when the job ends: use an absolute path "
            f"(sqlite:////mnt/aar/mlflow.db), a server URL, or leave {key} empty for the home's store")
    return prefix + os.path.normpath(Path.cwd() / relative)


@dataclass
class TrackingConfig:
    uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite:///<home>/mlflow.db
    experiment: str = "aar-baselines"


def _all_methods() -> list[str]:
    return ["vanilla_w2s", "vanilla_w2s:loss=soft", "confident_only", "aux_confidence",
            "self_training", "zero_shot_prior"]


@dataclass
class BaselineConfig:
    """A sweep of library methods over testbeds and seeds (`aar baseline`)."""

    home: str = ""  # testbeds, sealed labels, caches, MLflow; empty: $AAR_HOME, else ~/.aar
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
    resolve_locations(config)
    return config


def resolve_locations(config) -> None:
    """Fix the home and the stores it implies, once, at the entry point (in place)."""
    from aar_ray.tracking import resolve_tracking_uri

    if hasattr(config, "home"):
        config.home = resolve_home(config.home)
    if hasattr(config, "tracking"):
        uri = resolve_store_url(config.tracking.uri, "tracking.uri") if config.tracking.uri else ""
        config.tracking.uri = resolve_tracking_uri(uri or None, config.home)
    if getattr(config, "forum_url", ""):
        config.forum_url = resolve_store_url(config.forum_url, "forum_url")


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
        check_seeds("seeds", config.seeds)
    if hasattr(config, "student"):
        _check("student.head", config.student.head, ["auto", *HEADS])
        _check("student.kind", config.student.kind, ["encoder", "causal_lm"])
        _check("teacher.kind", config.teacher.kind, ["bow", "causal_lm"])
        for role, part in (("student", config.student), ("teacher", config.teacher)):
            if part.kind == "causal_lm" and not part.preset:
                raise ConfigError("a causal_lm student or teacher needs a preset, e.g. "
                                  "student.preset=qwen_math (conf/models/)")
            if part.kind == "causal_lm":  # missing weights: refused in seconds, before Ray or testbeds
                from aar_ray.models.presets import check_preset_weights

                check_preset_weights(part.preset, role)
    if hasattr(config, "generalisation"):
        check_seeds("generalisation.seeds", config.generalisation.seeds)
    if hasattr(config, "backend"):
        _check("backend.kind", config.backend.kind, ["search", "anthropic", "openai"])
        if config.researchers < 1:
            raise ConfigError("researchers must be at least 1")


def check_seeds(key: str, seeds: list[int]) -> None:
    """Seeds are distinct integers from 1 (the scorer's fixed baselines use seeds 1..N)."""
    bad = [s for s in seeds if s < 1]
    if bad:
        raise ConfigError(f"{key}: seed {bad[0]} is not allowed; seeds start at 1, e.g. seeds=[1,2,3]")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"{key}: seed {repeated[0]} is listed twice; each seed runs once")


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


__all__ = ["BaselineConfig", "LOSSES", "METHODS", "TrackingConfig", "load_config", "resolve_locations", "to_yaml"]
