"""What a method sees: public data, the teacher's labels, a way to make students, and a logger.

Nothing here holds a label: not of train_label (the teacher's training data stays with the
harness), nor of train_unlabel or test (the scorer has those). A method predicts every row of the
test split and is not told which half of it will be scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from aar_ray.models.artifacts import WeakLabels


@dataclass
class MethodContext:
    testbed: str
    format: str  # "binary" (P(True)) or "comparison" (P(A))
    public: dict[str, pd.DataFrame]  # train_unlabel and test, no labels
    weak: WeakLabels  # teacher P(True)/P(A) on train_unlabel and test
    eval_split: str  # the split whose predictions `run` returns: always "test"
    seed: int
    params: dict
    new_student: Callable[[], object]  # a fresh, untrained student for this testbed and seed
    metrics: dict[str, float] = field(default_factory=dict)

    def log(self, key: str, value: float) -> None:
        """A number worth keeping (recorded as an MLflow metric of the experiment)."""
        self.metrics[key] = float(value)

    def weak_targets(self) -> np.ndarray:
        return self.weak.probs["train_unlabel"]
