"""The CPU-scale weak teacher: a bag-of-words logistic regression trained on `train_label`.

It knows only the words (and word-by-answer pairs) it saw in its small labelled split, so it is
right on common words and guesses on rare ones: systematic, not random, errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

_TOKEN = re.compile(r"[a-z0-9'-]+")


@dataclass
class TeacherConfig:
    kind: str = "bow"  # bow (CPU testbeds) | causal_lm (LoRA on a causal LM, from `preset`)
    preset: str = ""  # causal_lm: a model preset, conf/models/<name>.yaml or a path (its `teacher`)
    epochs: int = 60
    lr: float = 0.05
    weight_decay: float = 1e-3


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def row_features(row: dict) -> list[tuple[str, float]]:
    """Signed sparse features. Binary: each question word crossed with the answer. Comparison:
    each reply's words (and prompt-word x reply-word pairs), first minus second."""
    if "choice" in row:
        choice = row["choice"].lower()
        return [(f"{w}|{choice}", 1.0) for w in set(_tokens(row["question"]))] + [(f"|{choice}", 1.0)]
    prompt = set(_tokens(row["prompt"]))
    feats: list[tuple[str, float]] = []
    for reply, sign in ((row["first"], 1.0), (row["second"], -1.0)):
        words = set(_tokens(reply))
        feats += [(w, sign) for w in words] + [(f"{p}|{w}", sign) for p in prompt for w in words]
    return feats


class BowTeacher:
    def __init__(self, config: TeacherConfig, seed: int):
        self.config = config
        self.seed = seed
        self.vocab: dict[str, int] = {}

    def _encode(self, rows: list[dict], grow: bool):
        ids, vals, offsets = [], [], []
        for row in rows:
            offsets.append(len(ids))
            for name, value in row_features(row):
                if name not in self.vocab and grow:
                    self.vocab[name] = len(self.vocab)
                if name in self.vocab:  # unseen words carry no evidence
                    ids.append(self.vocab[name])
                    vals.append(value)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(vals), torch.tensor(offsets)

    def fit(self, rows: list[dict], labels: np.ndarray) -> "BowTeacher":
        torch.manual_seed(self.seed)
        ids, vals, offsets = self._encode(rows, grow=True)
        self.weights = nn.EmbeddingBag(len(self.vocab), 1, mode="sum")
        nn.init.normal_(self.weights.weight, std=0.01)
        y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        opt = torch.optim.Adam(self.weights.parameters(), lr=self.config.lr,
                               weight_decay=self.config.weight_decay)
        for _ in range(self.config.epochs):
            logits = self.weights(ids, offsets, per_sample_weights=vals).squeeze(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return self

    def predict_proba(self, rows: list[dict]) -> np.ndarray:
        ids, vals, offsets = self._encode(rows, grow=False)
        with torch.no_grad():
            return torch.sigmoid(self.weights(ids, offsets, per_sample_weights=vals).squeeze(-1)).numpy()
