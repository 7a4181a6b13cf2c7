"""benchmarks/gpu_check.py on the CPU with the tiny model, so the command kept for a GPU day
cannot rot: every step passes and the one JSON line carries the figures benchmarks/README.md quotes."""

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


def test_gpu_check_passes_every_step_on_the_cpu_and_prints_one_json_line(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report = gpu_check.main(["--model", "tiny:qwen3", "--rows", "24", "--work-dir", str(tmp_path)])
    lines = [line for line in out.getvalue().splitlines() if line.strip().startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0]) == report
    assert report["ok"], json.dumps(report["steps"], indent=1)
    steps = report["steps"]
    assert set(steps) == {"model", "transformers_scoring", "vllm_scoring", "lora_training", "engine_pool"}
    assert steps["vllm_scoring"]["max_abs_diff_vs_transformers"] <= 1e-4 and steps["vllm_scoring"]["dtype"] == "float32"
    assert steps["engine_pool"]["max_abs_diff_vs_in_process_vllm"] <= 1e-3 and steps["engine_pool"]["replicas"] == 1
    assert report["vllm_over_transformers_scoring"] > 0 and steps["lora_training"]["tokens_per_s"] > 0
