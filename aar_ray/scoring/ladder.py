"""The Ladder (Blum & Hardt, arXiv:1502.04585): the release rule of researchers' feedback, and
what it lets leak.

A leaderboard that moves only when a result beats the best so far by more than a step `eta`,
and then shows it rounded to the eta grid, answers each query with "not better" or with a new,
higher value on a grid. However the queries are built (single-row flips, group tests steered
to a boundary, boosting), an analyst's whole transcript is then one of few possible ones:

    at most M improvements, each to a larger one of the M grid values a score can reach, among
    Q answers  ->  at most sum_m C(Q, m) C(M, m) = C(Q + M, M) transcripts,

so Q answers carry at most log2 C(Q + M, M) bits (about M log2(e Q / M)), however many labels
they are aimed at; a rounded score shown on every answer would carry log2(#values) bits each.
`labels_beyond_chance_bound` turns bits into labels.

Everything here is pure arithmetic on scores; nothing reads a label.
"""

from __future__ import annotations

import math
from typing import Iterable


def ladder_release(best_so_far: float | None, new_score: float, noise: float) -> float:
    """The score to show after `new_score` arrives: a new best, rounded to a multiple of
    `noise`, only if it beats `best_so_far` by more than `noise`; otherwise `best_so_far`.

    Rounding to the noise grid is part of the rule: the released number then carries no more
    than one step of information, so resubmitting variants cannot read finer differences.
    """
    if noise <= 0:
        raise ValueError(f"noise must be positive, got {noise}")
    if best_so_far is not None and new_score <= best_so_far + noise:
        return best_so_far
    return round(round(new_score / noise) * noise, 6)


def ladder_step(rows: int, weak_acc: float, strong_acc: float, standard_errors: float,
                min_step: float, resolution: float) -> float:
    """The Ladder's step in PGR units: `standard_errors` binomial standard errors of an
    accuracy halfway between teacher and ceiling on `rows` rows, divided by the gap, rounded up
    to `resolution` and at least `min_step`.

    One standard error is the smallest difference between two methods that this split can
    tell from sampling noise; a finer step would show researchers noise as progress and give an
    attacker more distinguishable answers (more levels M, so more bits)."""
    gap = strong_acc - weak_acc
    middle = (weak_acc + strong_acc) / 2
    se = math.sqrt(middle * (1 - middle) / rows) / gap
    steps = math.ceil(round(standard_errors * se / resolution, 9))
    return round(max(min_step, steps * resolution), 6)


def ladder_levels(floor: float, ceiling: float, step: float) -> int:
    """M: how many values the Ladder can release for scores up to `ceiling` when it starts at
    `floor`. Released values are multiples of `step` above `floor` and at most
    round(ceiling / step) steps; each improvement releases a larger one."""
    return max(0, round(ceiling / step) - math.floor(floor / step + 1e-9))


def transcript_bits(queries: int, levels: int) -> float:
    """log2 C(Q + M, M): the most bits Q Ladder answers with M releasable values can carry."""
    q, m = max(0, queries), max(0, levels)
    return (math.lgamma(q + m + 1) - math.lgamma(q + 1) - math.lgamma(m + 1)) / math.log(2)


def _entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def labels_beyond_chance_bound(rows: int, prior_error: float, bits: float) -> float:
    """The most labels beyond chance that `bits` of feedback can be worth, on `rows` rows that a
    label-free guess gets wrong at rate `prior_error` (chance = that guess).

    Rate-distortion of the guess's errors (i.i.d. Bernoulli(p)): fixing errors down to a rate D
    takes at least rows * (H(p) - H(D)) bits, so b bits leave D >= H^-1(H(p) - b / rows) and at
    most rows * (p - D) more correct labels. With p = 1/2 (a coin) this is about
    sqrt(rows * b / 2.9), not b: near chance each bit buys more than one label's worth."""
    p = min(prior_error, 1 - prior_error)
    target = _entropy(p) - bits / rows
    if target <= 0:
        return rows * p
    low, high = 0.0, p  # H is increasing on [0, 1/2]: find D with H(D) = target
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _entropy(mid) < target else (low, mid)
    return rows * (p - high)
