"""Runs inside the sandbox: load `idea.py` from the working directory, call its run(ctx) through
the same path as library methods (with the teacher's labels from `weak.npz`, since the sandbox
hides their cache), and send the result as one JSON document on stdout.

The idea's own prints go to stderr: stdout is the result channel, and the parent parses it with
a fixed schema (see ideas.parse_idea_output). An idea that writes to the channel itself only
spoils its own result.
"""

import importlib.util
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from aar_ray.experiments import ExperimentSpec, run_method
from aar_ray.models import StudentConfig, TeacherConfig
from aar_ray.models.artifacts import WeakLabels


def load_spec(path: Path) -> ExperimentSpec:
    raw = json.loads(path.read_text())
    raw["student"], raw["teacher"] = StudentConfig(**raw["student"]), TeacherConfig(**raw["teacher"])
    return ExperimentSpec(**raw)


def load_run(path: Path):
    module_spec = importlib.util.spec_from_file_location("idea", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise SystemExit("idea.py must define run(ctx) returning P(True)/P(A) for every row of ctx.eval_split")
    return module.run


def main(input_file: str) -> None:
    import torch

    result_channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # from here on, prints (the idea's and the libraries') go to stderr
    sys.stdout = sys.stderr
    torch.set_num_threads(1)
    spec = load_spec(Path(input_file))
    with np.load("weak.npz") as saved:  # teacher_labels(spec), from outside: the cache is hidden
        weak = WeakLabels({split: saved[split] for split in saved.files}, asdict(spec.teacher), spec.seed)
    result = run_method(spec, run=load_run(Path("idea.py")), weak=weak)
    json.dump({"probs": result.probs.tolist(), "logged": result.metrics, "cpu_seconds": result.cpu_seconds},
              result_channel)
    result_channel.close()


if __name__ == "__main__":
    main(sys.argv[1])
