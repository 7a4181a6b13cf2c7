"""The GPU-scale student and teacher: a causal LM that answers with a label token (LabelLM),
fit by LoRA, behind the same contracts as the CPU encoder student and bag-of-words teacher.

The model itself and its parts live below the engines, in aar_ray.lm: settings (lm.config),
weights on this machine (lm.weights), prompts and label tokens (lm.prompts), the model and its
training loop (lm.label_lm), adapter storage (lm.adapters).

LoRA adapters (peft) are the only trained weights; they are saved to `<adapter_uri>/<name>`
and can be loaded back by the student, the teacher or an inference engine.

A student's reads of its base model -- the zero-shot prior (the sandbox's `ue_zeroshot`) and
predictions before any fit -- run in its own process (`inference: local`) or through the shared
engine pool of its model (`inference: pool`, the preset's `engine_pool`), where many researchers'
requests share a few vLLM engines instead of each loading the weights.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Self, Union

import numpy as np

from aar_ray.engines.base import BINARY_LABELS, log_odds
from aar_ray.engines.pool import PoolConfig
from aar_ray.lm.adapters import adapter_location
from aar_ray.lm.config import CausalLMConfig, Inference
from aar_ray.lm.label_lm import LabelLM
from aar_ray.lm.prompts import EncodedPrompt, as_records
from aar_ray.models.student import LOSSES, LossFn

# --------------------------------------------------------------------------- student and teacher

def _loss_fn(loss: Union[str, LossFn]) -> LossFn:
    return LOSSES[loss] if isinstance(loss, str) else loss


class _AdapterFiles:
    """Saving and loading the one LoRA adapter ("default") of a student or a teacher, which
    both hold `config`, `name`, `lm` and `adapter_path`."""

    def save_adapter(self, name: str | None = None) -> str:
        """Save the adapter to `<adapter_uri>/<name>` (default: this model's name)."""
        location = adapter_location(self.config.adapter_uri, name or self.name)
        self.adapter_path = self.lm.save_adapter(location)
        return self.adapter_path

    def load_adapter(self, location: str) -> Self:
        self.lm.load_adapter(location, "default", trainable=True)
        self.adapter_path = location
        return self


class CausalLMStudent(_AdapterFiles):
    """The strong student: fit(split, targets, loss) / predict_proba(split) on a testbed's
    public rows, with the same contract as EncoderStudent. Repeated fits keep training the
    same adapter, as the encoder student keeps training its head.

    With `config.inference == "pool"` the base model's reads go to the shared engine pool of
    `pool_config` (started on first use, then reused by every student of the same model) and the
    weights are loaded into this process only for a fit. Where no Ray is running (a sandboxed
    idea) the same reads run locally."""

    def __init__(self, rows: dict[str, object], config: CausalLMConfig, seed: int = 0,
                 name: str | None = None, pool_config: PoolConfig | None = None):
        self.rows = {split: as_records(r) for split, r in rows.items()}
        self.config = config
        self.seed = seed
        self.name = name or f"student-seed{seed}-{uuid.uuid4().hex[:8]}"
        self.pool_config = pool_config
        self._pool = None  # the shared pool's actor handle, once reached
        # A pool student may never need the weights here (a zero-shot prior): load them on demand.
        self._lm = LabelLM(config, seed) if config.inference == Inference.local else None
        self.losses: list[float] = []
        self.adapter_path: str | None = None
        self._encoded: dict[tuple[str, bool], list[EncodedPrompt]] = {}

    @property
    def lm(self) -> LabelLM:
        if self._lm is None:
            self._lm = LabelLM(self.config, self.seed)
        return self._lm

    def _prompts(self, split: str, rows: np.ndarray | None, zero_shot: bool = False) -> list[EncodedPrompt]:
        if (split, zero_shot) not in self._encoded:  # tokenise a split once
            encode = self.lm.prompts.encode
            self._encoded[(split, zero_shot)] = [encode(r, zero_shot) for r in self.rows[split]]
        encoded = self._encoded[(split, zero_shot)]
        return encoded if rows is None else [encoded[i] for i in np.asarray(rows)]

    def fit(self, split: str, targets: np.ndarray, loss: Union[str, LossFn] = "soft",
            weights: np.ndarray | None = None, rows: np.ndarray | None = None) -> "CausalLMStudent":
        """Train the LoRA adapter on `targets` (P(True) or P(A), soft or hard) for `rows` of `split`."""
        prompts = self._prompts(split, rows)
        if len(targets) != len(prompts):
            raise ValueError(f"{len(targets)} targets for {len(prompts)} rows of {split!r}")
        self.losses += self.lm.train(prompts, targets, _loss_fn(loss), weights)
        return self

    def predict_proba(self, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        fitted = self._lm is not None and self._lm.has_adapter("default")
        if not fitted and self._engine_pool() is not None:  # the base model: the pool serves it
            return self._pool_scores(split, rows, zero_shot=False).astype(np.float32)
        adapter = "default" if fitted else None
        return _sigmoid(self.lm.predict_logit(self._prompts(split, rows), adapter))

    def zero_shot_scores(self, split: str) -> np.ndarray:
        """The base model's prior, no training and no adapter: log P(True) - log P(False) on
        the sandbox's zero-shot claim prompt (for comparison rows: the claim "A is more
        helpful than B"). Higher means more likely True / more likely A."""
        if self._engine_pool() is not None:
            return log_odds(self._pool_scores(split, None, zero_shot=True)).astype(np.float32)
        return self.lm.predict_logit(self._prompts(split, None, zero_shot=True), adapter=None)

    # -- the shared engine pool (inference: pool)

    def _engine_pool(self):
        """The shared pool's actor handle, or None to read the base model in this process."""
        if self.config.inference != Inference.pool:
            return None
        if self._pool is None:
            import ray

            if not ray.is_initialized():
                # No Ray here (a sandboxed idea, a plain script): a pool cannot be reached, and
                # starting a private Ray for one would load the weights anyway.
                warnings.warn("inference: pool, but Ray is not running in this process; the "
                              "base model is read locally", stacklevel=3)
                return None
            self._pool = self._start_pool()
        return self._pool

    def _start_pool(self):
        from aar_ray.engines.pool import shared_pool_name, start_shared_pool

        # Detached: the pool, and the engines it has loaded, outlive the experiment that started it.
        return start_shared_pool(shared_pool_name(self.config), self.config, self.pool_config,
                                 detached=True)

    def _pool_scores(self, split: str, rows: np.ndarray | None, zero_shot: bool) -> np.ndarray:
        """P(True) / P(A) from the pool; the pool formats each row as this student would."""
        import ray

        items = self.rows[split] if rows is None else [self.rows[split][i] for i in np.asarray(rows)]
        try:
            return ray.get(self._pool.score_labels.remote(items, None, BINARY_LABELS, zero_shot))
        except ray.exceptions.RayActorError as err:
            if isinstance(err, ray.exceptions.RayTaskError):
                raise  # the pool answered with an error (e.g. its replicas kept dying): not ours to retry
            # The pool actor itself died (its node was lost, someone stopped it): start or find a
            # new one under the same name and ask once more.
            self._pool = self._start_pool()
            return ray.get(self._pool.score_labels.remote(items, None, BINARY_LABELS, zero_shot))


class CausalLMTeacher(_AdapterFiles):
    """The weak teacher at GPU scale: the same label-token model fine-tuned by LoRA on
    train_label; fit(rows, labels) / predict_proba(rows) as BowTeacher."""

    def __init__(self, config: CausalLMConfig, seed: int = 0, name: str | None = None):
        self.config = config
        self.seed = seed
        self.name = name or f"teacher-seed{seed}-{uuid.uuid4().hex[:8]}"
        self.lm = LabelLM(config, seed)
        self.losses: list[float] = []
        self.adapter_path: str | None = None

    def fit(self, rows, labels: np.ndarray) -> "CausalLMTeacher":
        prompts = [self.lm.prompts.encode(r) for r in as_records(rows)]
        self.losses += self.lm.train(prompts, np.asarray(labels, dtype=np.float32), LOSSES["soft"])
        return self

    def predict_proba(self, rows) -> np.ndarray:
        prompts = [self.lm.prompts.encode(r) for r in as_records(rows)]
        adapter = "default" if self.lm.has_adapter("default") else None
        return _sigmoid(self.lm.predict_logit(prompts, adapter))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


