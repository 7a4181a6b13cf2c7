"""Routing a researcher's steps between several models by what they have been worth.

A `RoutedBackend` is a backend (same `step` and `estimate_cost`) over several backends. Before
each step it credits the previous step's model with what the researcher's best PGR gained since
(as the researcher saw it: released feedback, never the exact record), then picks the next model
with UCB1 on value per dollar:

    value(m) = (best-PGR gain credited to m) / (dollars m cost)
    pick argmax  mean_value(m) + exploration * scale * sqrt(2 ln N / n(m))

where n(m) is how often m was picked, N the total, and `scale` the largest mean value so far (so
the bonus is in the values' own units). Every model is tried once first. A step's gain is
credited to the model that took it: the idea it wrote, or the experiment it started, raised the
best. Spend and gains per model are kept for the report (`by_model`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass
class ModelRecord:
    name: str
    steps: int = 0
    dollars: float = 0.0
    tokens: int = 0
    gain: float = 0.0

    @property
    def value(self) -> float:
        """Best-PGR gain per dollar (per step for a free model)."""
        return self.gain / self.dollars if self.dollars > 0 else self.gain / max(1, self.steps)


class UCBRouter:
    def __init__(self, names: list[str], exploration: float = 1.0):
        if not names:
            raise ValueError("routing needs at least one model")
        self.records = [ModelRecord(n) for n in names]
        self.exploration = exploration

    def choose(self) -> int:
        untried = [i for i, r in enumerate(self.records) if r.steps == 0]
        if untried:
            return untried[0]
        total = sum(r.steps for r in self.records)
        scale = max(max(r.value for r in self.records), 1e-9)
        return max(range(len(self.records)), key=lambda i: self.records[i].value + self.exploration * scale
                   * math.sqrt(2 * math.log(total) / self.records[i].steps))

    def record_step(self, arm: int, dollars: float, tokens: int) -> None:
        r = self.records[arm]
        r.steps, r.dollars, r.tokens = r.steps + 1, r.dollars + dollars, r.tokens + tokens

    def credit(self, arm: int, gain: float) -> None:
        self.records[arm].gain += max(0.0, gain)


class RoutedBackend:
    """Several backends behind one, routed by `UCBRouter`; `best_pgr()` is the researcher's best
    released PGR so far (0 before any)."""

    def __init__(self, backends: dict[str, object], best_pgr: Callable[[], float], exploration: float = 1.0):
        self.names, self.backends = list(backends), list(backends.values())
        self.router = UCBRouter(self.names, exploration)
        self.best_pgr = best_pgr
        self._last: tuple[int, float] | None = None  # (arm, best PGR when it stepped)

    def context_window(self) -> int:
        """The smallest of the models' windows: a request must fit whichever model is picked."""
        return min(b.context_window() for b in self.backends)

    def step(self, system, messages, tools, max_tokens):
        best = self.best_pgr()
        if self._last is not None:
            arm, before = self._last
            self.router.credit(arm, best - before)
        arm = self.router.choose()
        turn = self.backends[arm].step(system, messages, tools, max_tokens)
        self.router.record_step(arm, turn.dollars, turn.usage.total_tokens)
        self._last = (arm, best)
        return turn

    def estimate_cost(self, system, messages, tools, max_tokens):
        """The dearest model's estimate: a budget check must hold whichever model is picked."""
        estimates = [b.estimate_cost(system, messages, tools, max_tokens) for b in self.backends]
        return max(estimates, key=lambda e: e[1])

    def by_model(self) -> list[dict]:
        return [{"model": r.name, "steps": r.steps, "dollars": round(r.dollars, 6), "tokens": r.tokens,
                 "pgr_gain": round(r.gain, 4), "gain_per_dollar": round(r.value, 4)} for r in self.router.records]
