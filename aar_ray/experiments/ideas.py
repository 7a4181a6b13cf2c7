"""Agent-written ideas: a file with `run(ctx)`, executed inside the sandbox, never in-process.

The sandbox sees the aar_ray package (without the module that decides embedded labels), the
testbed's public parquet and the sentence-vector cache, all read-only, and one scratch workspace;
no sealed store, no teacher training data, no teacher-label cache, no network, no Ray, no API keys.

What comes back is **bytes, not files**. The runner inside writes one JSON document to the
sandbox's stdout, and this process parses it with a fixed schema (`parse_idea_output`): a list of
exactly as many numbers as the test split has rows, a few named numbers the idea logged, its CPU
time. Nothing the idea leaves in its workspace is opened by this process, which can read more
than the idea can: a path there (a symlink to the sealed store, a FIFO, `/dev/zero`, a parquet
"dataset" directory) would make this process the idea's deputy. The output is capped by the
sandbox's capture limit and arrives within its wall-clock limit.

The idea's inputs are the same for research runs and the operator's checks (holdout re-runs,
teacher ablations): `input.json` says which testbed, seed, parameters and models, never which
half of the test split is scored or whether the teacher's labels (`weak.npz`) were shuffled.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

import aar_ray
from aar_ray import environment
from aar_ray.experiments import ExperimentSpec, MethodResult, teacher_labels
from aar_ray.sandbox import MIB, Sandbox, SandboxLimits
from aar_ray.testbeds import load_public

PACKAGE = Path(aar_ray.__file__).resolve().parent
# Decides the embedded testbeds' labels; idea code must not be able to read it, nor its bytecode.
LABEL_DECIDING = [PACKAGE / "testbeds" / "lexicon.py", PACKAGE / "testbeds" / "__pycache__"]
# The inputs an idea's runner reads: the same keys in every kind of run (see the docstring).
IDEA_INPUT_KEYS = ("testbed", "method", "seed", "home", "params", "student", "teacher")
# What an idea may log, so that every logged name and value is one MLflow accepts.
MAX_LOGGED = 100
LOGGED_NAME = re.compile(r"[A-Za-z0-9_.\-/ ]{1,200}")


CHANNEL_OVERFLOW = "[sandbox: output truncated"  # the capture's marker on a stream past its cap


class IdeaFailed(RuntimeError):
    """The idea's code raised, timed out or sent no usable predictions; the message says why
    (with its stderr tail), in words the researcher can act on."""


def sandbox_for(spec: ExperimentSpec, workspace: Path, limits: SandboxLimits) -> Sandbox:
    home = Path(spec.home)
    readonly = [PACKAGE, home / "testbeds" / spec.testbed, home / "cache"]
    # The teacher's labels reach an idea only through ctx.weak (written to the workspace), so
    # the teacher-ablation control, which shuffles ctx.weak, cannot be got round via the cache.
    return Sandbox(workspace, readonly=readonly, limits=limits,
                   hidden=[*LABEL_DECIDING, home / "cache" / "weak"])


# One core: what the experiment task reserved from Ray (run_method_task's num_cpus).
IDEA_LIMITS = SandboxLimits(cpus=1)


def idea_input(spec: ExperimentSpec) -> dict:
    """What the runner inside is told: nothing that differs between a research run and a check."""
    raw = asdict(spec)
    return {k: raw[k] for k in IDEA_INPUT_KEYS}


def run_idea(spec: ExperimentSpec, limits: SandboxLimits = IDEA_LIMITS) -> MethodResult:
    workspace = Path(tempfile.mkdtemp(prefix="aar-idea-"))
    try:
        (workspace / "idea.py").write_text(spec.code)
        (workspace / "input.json").write_text(json.dumps(idea_input(spec)))
        np.savez(workspace / "weak.npz", **teacher_labels(spec).probs)  # shuffled for the ablation
        result = sandbox_for(spec, workspace, limits).run(
            [sys.executable, "-m", "aar_ray.experiments.idea_runner", "input.json"],
            env={"PYTHONPATH": str(PACKAGE.parent), "OMP_NUM_THREADS": "1", **environment.OFFLINE})
    finally:
        shutil.rmtree(workspace, ignore_errors=True)  # unlinks what the idea left; never opens it
    if result.timed_out:
        raise IdeaFailed(f"idea {spec.method} ran past {limits.wall_seconds:.0f} s and was stopped")
    if result.returncode != 0:
        raise IdeaFailed(f"idea {spec.method} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    if CHANNEL_OVERFLOW in result.stdout[-200:]:
        raise IdeaFailed(f"idea {spec.method} sent more than {limits.max_output_bytes // MIB} MiB on its "
                         "result channel; print to stderr, not stdout, inside run(ctx)")
    ids = load_public(spec.testbed, spec.home)["test"]["id"].tolist()
    probs, logged, cpu_seconds = parse_idea_output(result.stdout, len(ids))
    return MethodResult(ids, probs, logged, result.wall_seconds, cpu_seconds)


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise IdeaFailed(f"{what} must be a finite number, got {str(value)[:80]!r}")
    return float(value)


def parse_idea_output(text: str, rows: int) -> tuple[np.ndarray, dict[str, float], float]:
    """(probabilities, logged numbers, CPU seconds) from the runner's JSON document, checked
    field by field: `{"probs": [rows numbers], "logged": {name: number}, "cpu_seconds": number}`."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise IdeaFailed("the idea's result is not the runner's JSON document (did run(ctx) print to "
                         f"stdout? use stderr); it starts {text[:200]!r}") from None
    if not isinstance(document, dict) or set(document) != {"probs", "logged", "cpu_seconds"}:
        raise IdeaFailed("the idea's result must be an object with exactly probs, logged and cpu_seconds")
    probs, logged = document["probs"], document["logged"]
    if not isinstance(probs, list) or len(probs) != rows:
        count = len(probs) if isinstance(probs, list) else type(probs).__name__
        raise IdeaFailed(f"run(ctx) must return one probability per row of the test split ({rows}); got {count}")
    values = np.array([_number(p, "each prediction") for p in probs], dtype=np.float64)
    if not isinstance(logged, dict) or len(logged) > MAX_LOGGED:
        raise IdeaFailed(f"ctx.log may record at most {MAX_LOGGED} numbers")
    for name in logged:
        if not LOGGED_NAME.fullmatch(name):
            raise IdeaFailed(f"logged name {name[:80]!r} must be 1-200 letters, digits or _ . - / space")
    numbers = {name: _number(value, f"logged value {name!r}") for name, value in logged.items()}
    return values, numbers, max(0.0, _number(document["cpu_seconds"], "cpu_seconds"))
