"""Agent-written ideas: a file with `run(ctx)`, executed inside the sandbox, never in-process.

The sandbox sees the aar_ray package (without the module that decides embedded labels), the
testbed's public parquet and the shared caches (sentence vectors, teacher labels), all read-only,
and one scratch workspace; no sealed store, no network, no Ray, no API keys. The runner inside
writes predictions to the workspace; this process, outside, reads them back and hands them on,
so idea code never holds a handle to the scorer.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

import aar_ray
from aar_ray.experiments import ExperimentSpec, MethodResult, teacher_labels
from aar_ray.sandbox import Sandbox, SandboxLimits

PACKAGE = Path(aar_ray.__file__).resolve().parent
# Decides the embedded testbeds' labels; idea code must not be able to read it, nor its bytecode.
LABEL_DECIDING = [PACKAGE / "testbeds" / "lexicon.py", PACKAGE / "testbeds" / "__pycache__"]


class IdeaFailed(RuntimeError):
    """The idea's code raised, timed out or wrote no predictions; the message holds its stderr tail."""


def sandbox_for(spec: ExperimentSpec, workspace: Path, limits: SandboxLimits) -> Sandbox:
    home = Path(spec.home)
    readonly = [PACKAGE, home / "testbeds" / spec.testbed, home / "cache"]
    # The teacher's labels reach an idea only through ctx.weak (written to the workspace), so
    # the teacher-ablation control, which shuffles ctx.weak, cannot be got round via the cache.
    return Sandbox(workspace, readonly=readonly, limits=limits,
                   hidden=[*LABEL_DECIDING, home / "cache" / "weak"])


# One core: what the experiment task reserved from Ray (run_method_task's num_cpus).
IDEA_LIMITS = SandboxLimits(cpus=1)


def run_idea(spec: ExperimentSpec, limits: SandboxLimits = IDEA_LIMITS) -> MethodResult:
    workspace = Path(tempfile.mkdtemp(prefix="aar-idea-"))
    try:
        (workspace / "idea.py").write_text(spec.code)
        (workspace / "spec.json").write_text(json.dumps({**asdict(spec), "code": None}))
        np.savez(workspace / "weak.npz", **teacher_labels(spec).probs)  # shuffled for the ablation
        result = sandbox_for(spec, workspace, limits).run(
            [sys.executable, "-m", "aar_ray.experiments.idea_runner", "spec.json"],
            env={"PYTHONPATH": str(PACKAGE.parent), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        out = workspace / "predictions.parquet"
        if result.timed_out:
            raise IdeaFailed(f"idea {spec.method} ran past {limits.wall_seconds:.0f} s and was stopped")
        if result.returncode != 0 or not out.exists():
            raise IdeaFailed(f"idea {spec.method} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        predictions = pd.read_parquet(out)
        metrics = json.loads((workspace / "metrics.json").read_text())
        return MethodResult(predictions["id"].tolist(), predictions["p"].to_numpy(np.float64),
                            metrics["logged"], result.wall_seconds, metrics["cpu_seconds"])
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
