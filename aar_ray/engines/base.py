"""The inference-engine contract shared by the transformers engine (CPU, tests), the vLLM engine
(GPU) and the pool of Ray actors that serves either.

An item to score is a row dict (binary or comparison; the engine formats it exactly as the
student does) or an already formatted prompt string, scored with `labels=(negative, positive)`.
With `zero_shot=True` a row is formatted as the sandbox's zero-shot claim prompt instead of the
fine-tuning prompt: the base model's prior on the row, with no adapter and no teacher (its
`ue_zeroshot`). The answer is P(positive) from the two label tokens' logits: P(True), or P(A).
"""

from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

import numpy as np

Item = Union[dict, str]
BINARY_LABELS = ("False", "True")


@runtime_checkable
class Engine(Protocol):
    def score_labels(self, items: Sequence[Item], adapter: str | None = None,
                     labels: tuple[str, str] = BINARY_LABELS, zero_shot: bool = False) -> np.ndarray:
        """P(positive label) per item, from the next-token logits of the two label tokens.
        `zero_shot` picks the zero-shot claim prompt for row dicts; prompt strings are scored as
        given, with `labels`."""

    def generate(self, prompts: Sequence[str], max_tokens: int, adapter: str | None = None) -> list[str]:
        """Greedy continuations of raw prompts."""

    def load_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA adapter at `path` under `name`, without restarting the engine."""


def encode_items(prompts, items: Sequence[Item], labels: tuple[str, str], zero_shot: bool = False) -> list:
    """Items as EncodedPrompts through the student's own PromptEncoder (`prompts`), so an engine
    scores exactly the tokens the student would: rows in the fine-tuning or zero-shot prompt,
    strings as given."""
    return [prompts.encode(x, zero_shot) if isinstance(x, dict) else prompts.encode_text(x, labels)
            for x in items]


def two_way_probability(negative_logprob: np.ndarray, positive_logprob: np.ndarray) -> np.ndarray:
    """Softmax over the two label tokens: P(positive) = sigmoid(lp_pos - lp_neg).

    Kept in float64: a confident read must not round to exactly 0 or 1 (float32 does past
    |logit| ~ 17), so that a caller can recover the log-odds of a zero-shot prior (`log_odds`,
    within 1e-3 up to |logit| 30)."""
    diff = np.asarray(positive_logprob, dtype=np.float64) - np.asarray(negative_logprob, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-diff))


def log_odds(p: np.ndarray) -> np.ndarray:
    """The inverse of two_way_probability: lp_pos - lp_neg from P(positive)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):  # p of exactly 0 or 1 gives -inf / +inf, still in order
        return np.log(p) - np.log1p(-p)
