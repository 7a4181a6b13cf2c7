"""The inference-engine contract shared by the transformers engine (CPU, tests), the vLLM engine
(GPU) and the pool of Ray actors that serves either.

An item to score is a row dict (binary or comparison; the engine formats it exactly as the
student does) or an already formatted prompt string, scored with `labels=(negative, positive)`.
The answer is P(positive) from the two label tokens' logits: P(True), or P(A).
"""

from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

import numpy as np

Item = Union[dict, str]
BINARY_LABELS = ("False", "True")


@runtime_checkable
class Engine(Protocol):
    def score_labels(self, items: Sequence[Item], adapter: str | None = None,
                     labels: tuple[str, str] = BINARY_LABELS) -> np.ndarray:
        """P(positive label) per item, from the next-token logits of the two label tokens."""

    def generate(self, prompts: Sequence[str], max_tokens: int, adapter: str | None = None) -> list[str]:
        """Greedy continuations of raw prompts."""

    def load_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA adapter at `path` under `name`, without restarting the engine."""


def two_way_probability(negative_logprob: np.ndarray, positive_logprob: np.ndarray) -> np.ndarray:
    """Softmax over the two label tokens: P(positive) = sigmoid(lp_pos - lp_neg)."""
    diff = np.asarray(positive_logprob, dtype=np.float64) - np.asarray(negative_logprob, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-diff))).astype(np.float32)
