"""Every environment variable aar_ray reads or sets, in this one module.

Each variable is read by one function below, and nothing else in `aar_ray` touches `os.environ`
(`tests/test_layering.py` fails on a read or a write anywhere else). Library code never changes
the environment: entry points do, with `prepare_process()` (`aar`'s main, so every command and
`jobs/*.py`; the test suite's conftest; benchmarks), and a replica's process gets the same
settings through its Ray runtime env (`engine_process_env`).

| variable | meaning | default |
|---|---|---|
| `AAR_HOME` | the aar home, the one storage root | `~/.aar` |
| `MLFLOW_TRACKING_URI` | the MLflow store | the home's sqlite store |
| `RAY_ADDRESS` | the cluster to join | a local Ray sized to this machine |
| `AAR_LOG_LEVEL` | level of the `aar_ray` logger tree on stderr | WARNING |
| `AAR_MODEL_CACHE` | plain weights converted from GGUF files | `$XDG_CACHE_HOME/aar_ray/models` |
| `AAR_TINY_MODELS` | tiny random-weight models for plumbing tests | `<tmp>/aar_ray_tiny` |
| `AAR_PG_BIN` | PostgreSQL's `initdb`/`pg_ctl` folder (tests, benchmarks) | newest installed |
| API keys | named by each backend's `api_key_env` | none: an error naming the variable |
| `RAY_JOB_CONFIG_JSON_ENV_VAR` | set by Ray in a job's entrypoint: relative homes are refused | |
| `MLFLOW_SERVER_ENABLE_JOB_EXECUTION` | set by `prepare_process`: MLflow servers started from here run no job runner | `false` |
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Weights come from packages or local folders; transformers and vLLM must never try a hub.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# vLLM's engine core in the calling process: a separate core process would need every caller to
# guard its `__main__`, and an engine replica is one process per engine anyway.
VLLM_IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# An MLflow server (`aar ui`, the tests' servers) without MLflow's GenAI job runner, which aar_ray
# never uses: 8 more processes that each import MLflow (benchmarks/mlflow_server_start.py).
MLFLOW_SERVER_WITHOUT_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
PROCESS_DEFAULTS = {**OFFLINE, **VLLM_IN_PROCESS, **MLFLOW_SERVER_WITHOUT_JOBS}

# Ray's job supervisor sets this in the environment of every job entrypoint it starts
# (ray/dashboard/modules/job/job_supervisor.py, `_get_driver_env_vars`); `RAY_JOB_ID` is not
# a reliable signal (Ray strips it from submitted environments and sets it only in workers).
RAY_JOB_ENV_MARK = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def prepare_process() -> None:
    """For entry points only: the process defaults above, unless the caller's environment says
    otherwise. Set before Ray starts, so a local Ray's workers inherit them too."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)


def engine_process_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine replica's process (its Ray runtime env's env_vars): the
    process defaults, then a pool's own `env`."""
    return {**PROCESS_DEFAULTS, **(extra or {})}


def aar_home() -> str | None:
    return os.environ.get("AAR_HOME") or None


def mlflow_tracking_uri() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def ray_address() -> str | None:
    return os.environ.get("RAY_ADDRESS") or None


def log_level() -> str | None:
    return os.environ.get("AAR_LOG_LEVEL") or None


def started_by_ray_job() -> bool:
    return RAY_JOB_ENV_MARK in os.environ


def model_cache() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aar_ray" / "models"
    return Path(os.environ.get("AAR_MODEL_CACHE") or default)


def tiny_models() -> Path:
    return Path(os.environ.get("AAR_TINY_MODELS") or Path(tempfile.gettempdir()) / "aar_ray_tiny")


def pg_bin() -> str | None:
    return os.environ.get("AAR_PG_BIN") or None


def secret(name: str) -> str:
    """The value of the variable a backend names for its API key, '' when unset."""
    return os.environ.get(name, "").strip()
