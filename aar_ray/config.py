"""Typed configs: OmegaConf structured configs built from dataclasses, defaults in `conf/`.

`load_config(Schema, path, overrides)` merges the dataclass defaults, a YAML file and
`key=value` overrides, and fails with a `ConfigError` that names the key and what is allowed.

It also fixes where state lives, once: `home` becomes an absolute path (`resolve_home`) and an
empty `tracking.uri` becomes the home's MLflow store (`resolve_tracking_uri`), so everything
below the entry point gets absolute locations and never depends on its working directory, which
inside a Ray job is Ray's temporary copy of the working tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from aar_ray.errors import UserError
from aar_ray.methods import METHODS, MethodSpecError, parse_method
from aar_ray.models.student import HEADS, LOSSES, StudentConfig
from aar_ray.models.teacher import TeacherConfig
from aar_ray.scoring.scorer import ScorerConfig

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    pass


# --------------------------------------------------------------------------- where state lives

# `ray job submit` runs the entrypoint in the node's copy of the uploaded working directory,
# <temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/, deleted with the session.
RAY_WORKING_DIR_MARK = os.path.join("runtime_resources", "working_dir_files")
# Ray's job supervisor sets this in the environment of every job entrypoint it starts
# (ray/dashboard/modules/job/job_supervisor.py, `_get_driver_env_vars`); `RAY_JOB_ID` is not
# a reliable signal (Ray strips it from submitted environments and sets it only in workers).
RAY_JOB_ENV_MARK = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    """True in a process started by `ray job submit` (or any process whose working directory is
    a Ray working_dir package), where a relative path would land in a folder Ray deletes."""
    return RAY_JOB_ENV_MARK in os.environ or RAY_WORKING_DIR_MARK in os.getcwd()


def default_home() -> str:
    """`$AAR_HOME`, else `~/.aar`: one per user, the same from every directory."""
    return os.environ.get("AAR_HOME") or "~/.aar"


def resolve_home(home: str | os.PathLike | None = None, key: str = "home") -> str:
    """The storage root as an absolute path. Empty means `default_home()`. A relative path is
    taken against the working directory where a person typed the command, and refused inside a
    Ray job, where the working directory is Ray's temporary copy of the tree."""
    given = str(home) if home else default_home()
    if not home:
        key = "AAR_HOME" if os.environ.get("AAR_HOME") else key
    if "://" in given:
        raise ConfigError(
            f"{key}={given!r}: object-store URIs are not supported as the aar home; use a path, "
            "on a cluster a mount every node shares (NFS, an RWX volume), e.g. home=/mnt/aar")
    path = Path(given).expanduser()
    if not path.is_absolute():
        if in_ray_job():
            raise ConfigError(
                f"{key}={given!r} is relative, and this process runs inside a Ray job, whose working "
                f"directory ({os.getcwd()}) is Ray's temporary copy of the uploaded files: state "
                f"there is lost when the job ends. Set {key} to an absolute path, on a cluster one "
                f"every node mounts (e.g. {key}=/mnt/aar), or leave home and AAR_HOME unset for "
                "~/.aar of the user running Ray")
        path = Path.cwd() / path
    return os.path.normpath(path)


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


__all__ = ["BaselineConfig", "ConfigError", "LOSSES", "METHODS", "TrackingConfig", "default_home",
           "in_ray_job", "load_config", "resolve_home", "resolve_locations", "to_yaml"]
