"""Configs: conf/ files load into typed dataclasses; mistakes name the key and the allowed values."""

from pathlib import Path

import pytest

from aar_ray.config import BaselineConfig, ConfigError, load_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_shipped_baseline_yaml_matches_the_dataclass_defaults():
    assert load_config(BaselineConfig, CONF / "baseline.yaml") == BaselineConfig()


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
