"""Where a model preset's LoRA adapters go: under the aar home every node shares, never under the
working directory (in a Ray job, Ray's temporary copy of the checkout)."""

from pathlib import Path

from aar_ray.models.presets import load_preset


def test_a_relative_adapter_folder_is_under_the_home_and_a_uri_is_kept(tmp_path):
    preset = load_preset("tiny_cpu", tmp_path / "home")
    assert preset.student.adapter_uri == str(tmp_path / "home" / "adapters" / "tiny")
    assert Path(preset.teacher.adapter_uri).is_relative_to(tmp_path / "home")
    kept = load_preset("tiny_cpu", tmp_path, **{"student.adapter_uri": "s3://bucket/adapters"})
    assert kept.student.adapter_uri == "s3://bucket/adapters"
    absolute = load_preset("tiny_cpu", tmp_path, **{"student.adapter_uri": "/mnt/aar/adapters"})
    assert absolute.student.adapter_uri == "/mnt/aar/adapters"
