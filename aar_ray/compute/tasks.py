"""Training fits as Ray tasks, on demand.

A fit is a Ray task that asks for `num_gpus`, so experiments from every researcher queue on one
shared pool of GPUs and a GPU is held only while a fit runs (a GPU task's worker process exits
when it is done, max_calls=1, so its CUDA memory is returned too). Ray retries a fit whose
worker or node died (`max_retries`); an exception raised by the fit itself is not retried, it
would only fail again. A CUDA out-of-memory error comes back as GPUOutOfMemory, which names the
knobs that make a fit smaller.

If the caller has an active MLflow run, a finished fit's adapter location is logged to it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np
import ray

if TYPE_CHECKING:
    from aar_ray.models.causal_lm import CausalLMConfig
    from aar_ray.models.student import LossFn


@dataclass
class ComputeConfig:
    max_retries: int = 3  # re-runs after a worker or node death, not after an error in the fit
    num_cpus: float = 1  # CPUs a fit task holds beside its GPUs


class GPUOutOfMemory(RuntimeError):
    """A fit ran out of GPU memory; the message says which settings to lower."""


OOM_ADVICE = ("Make the fit smaller: lower micro_batch_size (rows per forward pass; batch_size, the "
              "rows per optimizer step, can stay), max_length (prompt tokens), or lora_r; set "
              "gradient_checkpointing: true; or give the fit a GPU with more memory.")


def is_cuda_oom(err: BaseException) -> bool:
    # By name, so that checking needs no torch import and catches every torch version's class.
    names = {cls.__name__ for cls in type(err).__mro__}
    return "OutOfMemoryError" in names or "CUDA out of memory" in str(err)


def run_guarded(fn: Callable, args: tuple, kwargs: dict, what: str) -> Any:
    """Call fn(*args, **kwargs), turning a CUDA out-of-memory error into GPUOutOfMemory."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        if is_cuda_oom(err):
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise GPUOutOfMemory(f"{what} ran out of GPU memory ({first_line}). {OOM_ADVICE}") from err
        raise


def task_options(num_gpus: float, compute: ComputeConfig) -> dict:
    return {"num_gpus": num_gpus, "num_cpus": compute.num_cpus,
            "max_retries": compute.max_retries, "retry_exceptions": False}


@functools.lru_cache(maxsize=None)
def _remote_guarded(uses_gpu: bool):
    # A GPU task gets a fresh worker process that exits after it (max_calls=1), so CUDA memory
    # never outlives a fit. Ray decides this when the function is made remote, not in .options().
    return ray.remote(max_calls=1)(run_guarded) if uses_gpu else ray.remote(run_guarded)


def submit(fn: Callable, *args, num_gpus: float = 1, compute: ComputeConfig | None = None,
           what: str | None = None, **kwargs) -> ray.ObjectRef:
    """Run fn(*args, **kwargs) as a Ray task holding `num_gpus` GPUs while it runs."""
    options = task_options(num_gpus, compute or ComputeConfig())
    remote = _remote_guarded(bool(num_gpus)).options(**options)
    return remote.remote(fn, args, kwargs, what or getattr(fn, "__name__", "task"))


# --------------------------------------------------------------------------- fit jobs

@dataclass
class FitResult:
    name: str
    adapter_path: str
    losses: list[float]
    predictions: dict[str, np.ndarray]  # P(True) / P(A) per requested split or row set
    seconds: float
    device: str


@dataclass
class StudentFitJob:
    """CausalLMStudent.fit on one split, then save the adapter and predict `predict` splits."""

    config: "CausalLMConfig"
    rows: dict[str, Any]  # the testbed's public rows per split
    split: str
    targets: np.ndarray
    loss: Union[str, "LossFn"] = "soft"
    weights: Optional[np.ndarray] = None
    fit_rows: Optional[np.ndarray] = None
    seed: int = 0
    name: Optional[str] = None
    predict: tuple[str, ...] = ("test",)

    def run(self) -> FitResult:
        from aar_ray.models.causal_lm import CausalLMStudent

        start = time.monotonic()
        student = CausalLMStudent(self.rows, self.config, self.seed, self.name)
        student.fit(self.split, self.targets, self.loss, self.weights, self.fit_rows)
        path = student.save_adapter()
        predictions = {split: student.predict_proba(split) for split in self.predict}
        return FitResult(student.name, path, student.losses, predictions, time.monotonic() - start,
                         str(student.lm.device))


@dataclass
class TeacherFitJob:
    """CausalLMTeacher.fit on labelled rows, then save the adapter and label each `predict` row set."""

    config: "CausalLMConfig"
    rows: Any
    labels: np.ndarray
    seed: int = 0
    name: Optional[str] = None
    predict: dict[str, Any] = field(default_factory=dict)

    def run(self) -> FitResult:
        from aar_ray.models.causal_lm import CausalLMTeacher

        start = time.monotonic()
        teacher = CausalLMTeacher(self.config, self.seed, self.name).fit(self.rows, self.labels)
        path = teacher.save_adapter()
        predictions = {key: teacher.predict_proba(rows) for key, rows in self.predict.items()}
        return FitResult(teacher.name, path, teacher.losses, predictions, time.monotonic() - start,
                         str(teacher.lm.device))


class FitHandle:
    """A submitted fit. result() waits for it and records the adapter in MLflow, if tracking."""

    def __init__(self, ref: ray.ObjectRef):
        self.ref = ref

    def result(self, timeout: float | None = None) -> FitResult:
        result = ray.get(self.ref, timeout=timeout)
        record_adapter(result)
        return result

    def cancel(self) -> None:
        ray.cancel(self.ref)


def submit_fit(job: Union[StudentFitJob, TeacherFitJob], compute: ComputeConfig | None = None) -> FitHandle:
    """Queue a fit on the cluster; it starts when `job.config.num_gpus` GPUs are free."""
    what = f"fit {job.name or type(job).__name__} ({job.config.model})"
    uri = job.config.adapter_uri
    if "://" not in uri and not Path(uri).expanduser().is_absolute():
        # A relative folder means the caller's folder, wherever the task lands. (On a cluster it
        # must be shared storage, or a URI such as s3://bucket/adapters.)
        absolute = dataclasses.replace(job.config, adapter_uri=str(Path(uri).resolve()))
        job = dataclasses.replace(job, config=absolute)
    return FitHandle(submit(job.run, num_gpus=job.config.num_gpus, compute=compute, what=what))


def record_adapter(result: FitResult) -> bool:
    """Log the adapter's location (and its small adapter_config.json) to the active MLflow run."""
    mlflow = sys.modules.get("mlflow")  # a caller that tracks runs has imported it already
    if mlflow is None or mlflow.active_run() is None:
        return False
    key = re.sub(r"[^\w.\- /]", "_", result.name)
    try:
        mlflow.log_param(f"adapter.{key}", result.adapter_path)
        config = Path(result.adapter_path) / "adapter_config.json"
        if config.exists():
            mlflow.log_artifact(str(config), artifact_path=f"adapters/{key}")
    except Exception as err:  # tracking must never lose a finished fit (e.g. a name logged twice)
        warnings.warn(f"could not record adapter {result.name!r} in MLflow: {err}", stacklevel=2)
        return False
    return True
