"""Configs: conf/ files load into typed dataclasses; mistakes name the key and the allowed values."""

from pathlib import Path

import pytest

from aar_ray.config import BaselineConfig, load_config
from aar_ray.errors import ConfigError
from aar_ray.environment import RAY_JOB_ENV_MARK
from aar_ray.home import in_ray_job, resolve_home

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_shipped_baseline_yaml_matches_the_dataclass_defaults():
    # both resolved the same way: the home and its MLflow store become absolute paths
    assert load_config(BaselineConfig, CONF / "baseline.yaml") == load_config(BaselineConfig)


def test_overrides_are_typed():
    config = load_config(BaselineConfig, None, ["student.epochs=3", "seeds=[7]", "methods=[vanilla_w2s:loss=soft]"])
    assert config.student.epochs == 3 and config.seeds == [7]


@pytest.mark.parametrize("override, message", [
    ("student.hiden=3", "unknown config key 'student.hiden'; allowed here: kind, preset, encoder, head, hidden"),
    ("bogus=1", "unknown config key 'bogus'; allowed here: home, testbeds, methods"),
    ("seeds=[a]", "bad value for 'seeds[0]'"),
    ("student.epochs=many", "bad value for 'student.epochs'"),
    ("methods=[majority]", "methods[0]: unknown method 'majority'; allowed: vanilla_w2s"),
    ("methods=[vanilla_w2s:loss=focal]", "allowed: hard, soft"),
    ("student.head=transformer", "student.head='transformer' is not allowed; allowed: auto, mlp, bilinear"),
    ("seeds=[]", "at least one entry"),
])
def test_mistakes_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(BaselineConfig, None, [override])
    assert message in str(err.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(BaselineConfig, tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- where state lives


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    """No AAR_HOME, no MLflow URI, not in a Ray job; HOME and the working directory in tmp."""
    for name in ("AAR_HOME", "MLFLOW_TRACKING_URI", RAY_JOB_ENV_MARK):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_home_is_aar_home_else_the_users_dot_aar(clean_env, monkeypatch):
    assert load_config(BaselineConfig).home == str(clean_env / "user" / ".aar")
    monkeypatch.setenv("AAR_HOME", "/srv/aar")
    assert load_config(BaselineConfig).home == "/srv/aar"
    assert load_config(BaselineConfig, None, ["home=/mnt/x/"]).home == "/mnt/x"  # the key wins


def test_a_relative_home_outside_a_job_is_taken_against_the_working_directory(clean_env):
    assert resolve_home("state/../aar") == str(clean_env / "aar")
    assert resolve_home("~/aar") == str(clean_env / "user" / "aar")


def test_a_relative_home_inside_a_ray_job_is_refused_naming_the_key(clean_env, monkeypatch):
    monkeypatch.setenv(RAY_JOB_ENV_MARK, "{}")  # what Ray's job supervisor sets for an entrypoint
    assert resolve_home("/mnt/aar") == "/mnt/aar" and resolve_home(None).endswith("/user/.aar")
    with pytest.raises(ConfigError, match=r"home='\.aar' is relative.*Ray job.*home=/mnt/aar"):
        load_config(BaselineConfig, None, ["home=.aar"])
    monkeypatch.setenv("AAR_HOME", "rel")
    with pytest.raises(ConfigError, match="AAR_HOME='rel' is relative"):
        load_config(BaselineConfig)
    monkeypatch.delenv("AAR_HOME")
    with pytest.raises(ConfigError, match="tracking.uri='sqlite:///m.db' names a relative sqlite file"):
        load_config(BaselineConfig, None, ["tracking.uri=sqlite:///m.db"])


def test_a_ray_working_dir_package_counts_as_a_job(clean_env, monkeypatch):
    package = clean_env / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    assert in_ray_job()
    with pytest.raises(ConfigError, match="is relative"):
        resolve_home(".aar")


def test_object_store_homes_are_refused(clean_env):
    with pytest.raises(ConfigError, match="object-store URIs are not supported as the aar home"):
        load_config(BaselineConfig, None, ["home=s3://bucket/aar"])


def test_the_default_mlflow_store_follows_the_home(clean_env, monkeypatch):
    config = load_config(BaselineConfig, None, ["home=/mnt/aar"])
    assert config.tracking.uri == "sqlite:////mnt/aar/mlflow.db"
    assert load_config(BaselineConfig, None, ["tracking.uri=sqlite:///m.db"]).tracking.uri == \
        f"sqlite:///{clean_env / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert load_config(BaselineConfig, None, ["home=/mnt/aar"]).tracking.uri == "http://mlflow:5000"
    explicit = load_config(BaselineConfig, None, ["tracking.uri=http://other:5000"])
    assert explicit.tracking.uri == "http://other:5000"


@pytest.mark.parametrize("override, message", [
    ("seeds=[0,1]", "seeds: seed 0 is not allowed; seeds start at 1"),
    ("seeds=[1,2,1]", "seeds: seed 1 is listed twice"),
])
def test_config_seeds_are_distinct_and_from_one(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(BaselineConfig, None, [override])
