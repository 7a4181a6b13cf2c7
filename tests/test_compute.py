"""Fits as Ray tasks on a local Ray whose GPUs are logical resources: queueing on a shared pool,
GPU release, retries after worker death only, out-of-memory errors, and a real tiny LoRA fit."""

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from aar_ray.compute import (ComputeConfig, GPUOutOfMemory, StudentFitJob, TeacherFitJob, is_cuda_oom,
                             record_adapter, run_guarded, submit, submit_fit, task_options)
from aar_ray.models.causal_lm import CausalLMConfig, materialize_tiny_model

ROWS = [{"question": q, "choice": c} for q in ("big", "small") for c in "cat dog cow red blue green".split()]
TARGETS = np.array([float(r["choice"] in ("cat", "dog", "cow")) for r in ROWS])


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def free_gpus_become(n, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("GPU", 0) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    return ray.available_resources().get("GPU", 0) == n


def pretend_fit(seconds):
    start = time.time()
    time.sleep(seconds)
    return start, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def most_at_once(intervals) -> int:
    events = sorted([(s, 1) for s, e in intervals] + [(e, -1) for s, e in intervals])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_four_one_gpu_fits_share_two_gpus_two_at_a_time(gpu_ray):
    refs = [submit(pretend_fit, 1.0, num_gpus=1) for _ in range(4)]
    results = ray.get(refs)
    assert most_at_once([(start, end) for start, end, _, _ in results]) == 2
    assert {gpu for _, _, gpu, _ in results} == {"0", "1"}  # each fit saw only the GPU it held
    assert len({pid for _, _, _, pid in results}) == 4  # a fresh worker each: CUDA memory never lingers
    assert free_gpus_become(2)  # nothing is held once the fits are done


def test_task_options_retry_worker_death_only():
    options = task_options(1, ComputeConfig(max_retries=5))
    assert options["max_retries"] == 5 and options["retry_exceptions"] is False


def die_on_first_attempt(marker: str):
    attempts = Path(marker)
    attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
    if len(attempts.read_text()) == 1:
        os._exit(1)  # the worker process dies, as on a node failure
    return len(attempts.read_text())


def fail_with_a_bug(marker: str):
    attempts = Path(marker)
    attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
    raise ValueError("a bug in the method")


def test_a_dead_worker_is_retried_but_a_failing_fit_is_not(gpu_ray, tmp_path):
    compute = ComputeConfig(max_retries=2)
    assert ray.get(submit(die_on_first_attempt, str(tmp_path / "dies"), num_gpus=1, compute=compute)) == 2
    with pytest.raises(ValueError, match="a bug in the method"):
        ray.get(submit(fail_with_a_bug, str(tmp_path / "bug"), num_gpus=1, compute=compute))
    assert (tmp_path / "bug").read_text() == "x"  # ran once


def run_out_of_gpu_memory():
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_out_of_memory_says_which_knobs_to_turn(gpu_ray):
    with pytest.raises(GPUOutOfMemory) as err:
        ray.get(submit(run_out_of_gpu_memory, num_gpus=1, what="fit student-7"))
    message = str(err.value)
    assert "fit student-7 ran out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in message
    for knob in ("micro_batch_size", "batch_size", "max_length", "lora_r", "gradient_checkpointing"):
        assert knob in message
    assert free_gpus_become(2)


def test_oom_detection_without_ray():
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert not is_cuda_oom(RuntimeError("shape mismatch"))
    with pytest.raises(GPUOutOfMemory, match="lower micro_batch_size"):
        run_guarded(lambda: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")), (), {}, "a fit")
    with pytest.raises(KeyError):  # other errors pass through untouched
        run_guarded(lambda: {}["x"], (), {}, "a fit")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    folder = materialize_tiny_model("qwen3", tmp_path_factory.mktemp("models"))
    return CausalLMConfig(model=str(folder), lora_r=4, lora_alpha=8, lr=1e-2, epochs=2, batch_size=6,
                          gradient_checkpointing=False, max_length=64,
                          adapter_uri=str(tmp_path_factory.mktemp("adapters")))


@pytest.fixture
def tracking(tmp_path):
    """An MLflow store in tmp_path, and the tracking URI put back afterwards."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        yield mlflow, mlflow.create_experiment("fits", artifact_location=(tmp_path / "artifacts").as_uri())
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside MLflow's SQL store
def test_a_real_student_fit_runs_as_a_task_and_is_recorded_in_mlflow(gpu_ray, tiny_config, tracking):
    mlflow, experiment = tracking
    handle = submit_fit(StudentFitJob(tiny_config, {"train": ROWS, "test": ROWS[:4]}, "train", TARGETS,
                                      name="student-a", predict=("test",)))
    with mlflow.start_run(experiment_id=experiment) as run:
        result = handle.result(timeout=120)
    assert result.adapter_path == str(Path(tiny_config.adapter_uri) / "student-a")
    assert (Path(result.adapter_path) / "adapter_model.safetensors").exists()
    assert result.predictions["test"].shape == (4,) and len(result.losses) == 2 * 2
    assert mlflow.get_run(run.info.run_id).data.params == {"adapter.student-a": result.adapter_path}
    artifacts = mlflow.MlflowClient().list_artifacts(run.info.run_id, "adapters/student-a")
    assert [a.path for a in artifacts] == ["adapters/student-a/adapter_config.json"]
    with mlflow.start_run(run_id=run.info.run_id), pytest.warns(UserWarning, match="could not record"):
        assert record_adapter(replace(result, adapter_path="/elsewhere")) is False  # params are immutable
    assert free_gpus_become(2)


@dataclass
class WhereWouldItSave:
    """A stand-in fit job that reports the adapter root its task was given."""

    config: CausalLMConfig
    name: str = "where"

    def run(self):
        return self.config.adapter_uri


def test_a_relative_adapter_folder_means_the_callers_folder(gpu_ray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cpu = CausalLMConfig(num_gpus=0)
    assert ray.get(submit_fit(WhereWouldItSave(replace(cpu, adapter_uri="adapters"))).ref) == str(
        tmp_path / "adapters")
    assert ray.get(submit_fit(WhereWouldItSave(replace(cpu, adapter_uri="s3://b/a"))).ref) == "s3://b/a"


def test_teacher_fit_job_labels_the_requested_rows(tiny_config):
    weak = TeacherFitJob(tiny_config, ROWS, TARGETS, name="teacher-a", predict={"unlabel": ROWS[:5]}).run()
    assert weak.predictions["unlabel"].shape == (5,) and Path(weak.adapter_path).name == "teacher-a"
    assert record_adapter(weak) is False  # no active MLflow run: nothing to record
