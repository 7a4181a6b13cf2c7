"""Per-researcher models: a campaign config gives researchers their own backends, every model is
checked before any set-up, and the campaign's record names them all."""

import pytest
from omegaconf import OmegaConf

from aar_ray.agents.preflight import PreflightError
from aar_ray.agents.researcher import BackendConfig
from aar_ray.campaign import CampaignConfig, campaign_backends, researcher_configs, run_campaign


def _config(tmp_path, **values) -> CampaignConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CampaignConfig),
                                               {"home": str(tmp_path / "home"), **values}))


def test_researchers_take_their_models_in_turn(tmp_path):
    config = _config(tmp_path, researchers=3, researcher_backends=[
        {"kind": "search"}, {"kind": "openai", "model": "small-model", "base_url": "http://127.0.0.1:9/v1"}])
    kinds = [(rc.backend.kind, rc.backend.model) for rc in researcher_configs(config)]
    assert kinds == [("search", ""), ("openai", "small-model"), ("search", "")]
    assert [b.model for b in campaign_backends(config)] == ["", "small-model"]  # each model once
    plain = _config(tmp_path, researchers=2, backend={"kind": "search"})
    assert [rc.backend for rc in researcher_configs(plain)] == [BackendConfig(kind="search")] * 2


def test_a_campaign_whose_second_model_is_unreachable_refuses_to_start_naming_it(tmp_path):
    config = _config(tmp_path, name="two-models", researchers=2, researcher_backends=[
        {"kind": "search"},
        {"kind": "openai", "model": "small-model", "base_url": "http://127.0.0.1:9/v1", "startup_timeout_s": 0.5}])
    with pytest.raises(PreflightError, match="127.0.0.1:9"):
        run_campaign(config, progress=False)
    assert not (tmp_path / "home" / "mlflow.db").exists()  # refused before Ray, testbeds or MLflow
    assert not (tmp_path / "home" / "campaigns" / "two-models").exists()  # the same command can run again


def test_a_directions_file_of_the_wrong_shape_is_a_config_error_naming_the_key(tmp_path):
    from aar_ray.errors import ConfigError

    bad = tmp_path / "directions.yaml"
    bad.write_text("- just a string\n")
    with pytest.raises(ConfigError, match=r"directions='.*directions.yaml': expected a YAML list of entries"):
        researcher_configs(_config(tmp_path, directions=str(bad)))
