"""The CPU-scale strong student: a frozen pretrained encoder with a trainable pair head.

Every row is a pair of texts: (question, choice) for binary rows, and (prompt, reply) for each
side of a comparison row. The head scores a pair; a comparison's logit is score(prompt, first)
minus score(prompt, second), a Bradley-Terry reward model, so swapping the replies flips the
prediction exactly. The same fit/predict contract is implemented by the causal-LM student.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
import torch
from torch import nn

# loss(logits, targets, progress in [0, 1]) -> per-row loss
LossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass
class StudentConfig:
    kind: str = "encoder"  # encoder (CPU testbeds) | causal_lm (LoRA on a causal LM, from `preset`)
    preset: str = ""  # causal_lm: a model preset, conf/models/<name>.yaml or a path (its `student`)
    encoder: str = "minilm-l6"
    head: str = "auto"  # "mlp", "bilinear", or "auto": the testbed's recommended head
    hidden: int = 256
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.01


@dataclass
class RowVectors:
    """Cached sentence vectors of one split: kind 'binary' uses (question, choice),
    kind 'comparison' uses (prompt, first, second)."""

    kind: str
    fields: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def take(self, rows: np.ndarray) -> "RowVectors":
        return RowVectors(self.kind, {k: v[rows] for k, v in self.fields.items()})


def soft_bce(logits: torch.Tensor, targets: torch.Tensor, progress: float) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def hard_bce(logits: torch.Tensor, targets: torch.Tensor, progress: float) -> torch.Tensor:
    return soft_bce(logits, (targets > 0.5).float(), progress)


LOSSES: dict[str, LossFn] = {"soft": soft_bce, "hard": hard_bce}


class PairHead(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x, y, x * y, x - y], dim=-1)).squeeze(-1)

    def forward(self, kind: str, f: dict[str, torch.Tensor]) -> torch.Tensor:
        if kind == "binary":
            return self.score(f["question"], f["choice"])
        return self.score(f["prompt"], f["first"]) - self.score(f["prompt"], f["second"])


class BilinearHead(PairHead):
    """A linear probe on the elementwise product of the two vectors: it can express the
    encoder's own prior (their cosine) and little else, a strong simplicity bias."""

    def __init__(self, dim: int, hidden: int):
        nn.Module.__init__(self)
        self.linear = nn.Linear(dim, 1)

    def score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Unit vectors give products of about 1/dim; scaling them up lets one learning rate
        # suit both heads (Adam's steps are scale-free, so this acts as a 10x rate here).
        return self.linear(x * y * 10.0).squeeze(-1)


HEADS: dict[str, type[PairHead]] = {"mlp": PairHead, "bilinear": BilinearHead}


class EncoderStudent:
    """fit(split, targets, loss) and predict_proba(split) on one testbed's cached vectors."""

    def __init__(self, vectors: dict[str, RowVectors], config: StudentConfig, seed: int):
        self.vectors = vectors
        self.config = config
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        dim = next(iter(next(iter(vectors.values())).fields.values())).shape[1]
        if config.head not in HEADS:
            raise ValueError(f"student.head={config.head!r}; allowed: {', '.join(HEADS)}")
        self.head = HEADS[config.head](dim, config.hidden)

    def _tensors(self, split: str, rows: np.ndarray | None) -> tuple[str, dict[str, torch.Tensor]]:
        v = self.vectors[split] if rows is None else self.vectors[split].take(rows)
        return v.kind, {k: torch.from_numpy(a) for k, a in v.fields.items()}

    def fit(self, split: str, targets: np.ndarray, loss: Union[str, LossFn] = "soft",
            weights: np.ndarray | None = None, rows: np.ndarray | None = None) -> "EncoderStudent":
        """Train the head on `targets` (P(True) or P(A), soft or hard) for `rows` of `split`."""
        loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
        kind, feats = self._tensors(split, rows)
        y = torch.as_tensor(np.array(targets, dtype=np.float32))
        w = torch.ones_like(y) if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32))
        if len(y) != len(next(iter(feats.values()))):
            raise ValueError(f"{len(y)} targets for {len(next(iter(feats.values())))} rows of {split!r}")
        cfg = self.config
        opt = torch.optim.AdamW(self.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, -(-len(y) // cfg.batch_size))
        total = cfg.epochs * steps_per_epoch
        self.head.train()
        for epoch in range(cfg.epochs):
            perm = torch.randperm(len(y), generator=self.generator)
            for i in range(steps_per_epoch):
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                logits = self.head(kind, {k: t[idx] for k, t in feats.items()})
                progress = (epoch * steps_per_epoch + i) / total
                per_row = loss_fn(logits, y[idx], progress)
                batch_loss = (per_row * w[idx]).sum() / w[idx].sum().clamp(min=1e-8)
                opt.zero_grad()
                batch_loss.backward()
                opt.step()
        return self

    def predict_proba(self, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        kind, feats = self._tensors(split, rows)
        self.head.eval()
        with torch.no_grad():
            return torch.sigmoid(self.head(kind, feats)).numpy()

    def zero_shot_scores(self, split: str) -> np.ndarray:
        """The encoder's prior with no training: how well the answer matches the question
        (cosine of the two vectors); higher means more likely True / more likely A."""
        v = self.vectors[split].fields
        if self.vectors[split].kind == "binary":
            return (v["question"] * v["choice"]).sum(-1)
        return (v["prompt"] * v["first"]).sum(-1) - (v["prompt"] * v["second"]).sum(-1)
