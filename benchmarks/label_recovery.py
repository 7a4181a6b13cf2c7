"""Label recovery benchmark: how many validation labels an adaptive attacker reads through the
scorer's answers, under the old answers and under the Ladder, side by side in one run.

    .venv/bin/python benchmarks/label_recovery.py [--testbed taxonomy] [--head-start 50] [--home DIR]

Prints ONE JSON line. The testbed is generated into a temporary home (or `--home`) with its own
secret, and scored by the real Scorer (baselines from the real student); the time that takes
is `prepare_seconds`. Two scorers, one attack:

  - old: what researchers used to see, the record's PGR rounded to 0.01 on every answer, with
    a budget of 1,000 submissions per submitter (`ScorerConfig(queries_per_analyst=1000)`,
    read through `RecordView`; the old near-copy check is not reproduced, the attack keeps
    each query far from earlier ones, and `near_copies` counts those it would have flagged);
  - ladder: the new default, only `feedback` (the Ladder's released best and `improved`),
    the default per-analyst budget, the queries spread over three researchers of one campaign;
  - ladder_one_row_step: a control, the same with a step of one row's worth of PGR (about
    0.004 on taxonomy): what the attack reads when the step, not the attack, is weak.

The attack (`Attack`) starts from a label-free guess for every row (the teacher's labels: what
every researcher has; "chance" is that guess's count of right labels) and `--head-start` rows
whose labels it already knows (given, not counted). It then asks, adaptively, about groups of
rows flipped away from the guess, with known rows as padding that steers the count of right
rows to where an answer boundary (a 0.01 rounding step, or the Ladder's bar) splits the
hypotheses best: it picks, among fresh groups of 1-64 rows, splits of groups whose count of
errors it knows, and the padding level, the query whose answer has the most entropy under its
beliefs (on the Ladder, among queries unlikely to land more than one level past the bar: a new
best raises the bar for good, and overshooting it wastes the padding's reach). Answers are
decoded exactly: the attacker knows the baselines, the rounding and the Ladder's rule, and its
beliefs factor exactly (one offset, and per group a table of what is still possible). Groups
with no errors or only errors are learnt row by row; others are split (generalised binary
splitting). Which known rows are set right is drawn at random per query (a middle padding
level when several are as good), so queries stay far apart.

Figures per scorer: queries used, labels determined (and how many of them are right), labels
right beyond chance in all and per 100 queries, and the information bound: bits the answers can
carry (old: log2(distinct answers) per answer x queries; Ladder: log2 C(Q + M, M) for the whole
budget) and the labels beyond chance those bits can buy at most (rate-distortion for a guess
wrong at the measured rate, `ladder.labels_beyond_chance_bound`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from aar_ray.models.artifacts import binary_labels, weak_labels
from aar_ray.scoring import BudgetExhausted, Scorer, ScorerConfig, pgr
from aar_ray.scoring.ladder import labels_beyond_chance_bound, ladder_release
from aar_ray.testbeds import ensure_testbed, eval_ids, eval_rows, load_public, load_sealed

NO = -10**9  # the answer id of "not better" on the Ladder: below every released value
GROUP_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
JOINT_OFFSETS = 4  # group tests start once the offset is known to within this many values
OVERSHOOT = 0.05  # on the Ladder: the most P(a new best more than one level past the bar) a query may have


# --- what the attacker reads ------------------------------------------------------------------

class RecordView:
    """The old answer: the record's PGR, rounded to the scorer's resolution, on every answer."""

    bar = False  # no bar to raise: any answer may show any value

    def __init__(self, scorer: Scorer, testbed: str, rows: int):
        base = scorer.baselines(testbed)["validation"]
        self.weak, self.strong, self.rows = base["weak_acc"], base["strong_acc"], rows
        self.resolution = scorer.config.resolution

    def answer_id(self, answer: dict) -> int:
        return round(answer["pgr"] / self.resolution)

    def ids_by_count(self) -> np.ndarray:
        """The answer each count of right rows would get now (the scorer's own arithmetic)."""
        r = self.resolution
        return np.array([round(round(round(pgr(c / self.rows, self.weak, self.strong) / r) * r, 6) / r)
                         for c in range(self.rows + 1)], dtype=np.int64)

    def observe(self, answer: dict) -> None:
        pass


class LadderView(RecordView):
    """The new answer: `feedback` only, the analyst's released best and whether it improved."""

    bar = True  # a new best raises the bar for good

    def __init__(self, scorer: Scorer, testbed: str, rows: int):
        super().__init__(scorer, testbed, rows)
        self.step, self.floor, self.best = scorer.ladder_step(testbed), scorer.config.ladder_floor, None

    def answer_id(self, answer: dict) -> int:
        feedback = answer["feedback"]
        return round(feedback["pgr"] / self.step) if feedback["improved"] else NO

    def ids_by_count(self) -> np.ndarray:
        start = self.floor if self.best is None else self.best
        ids = []
        for c in range(self.rows + 1):
            score = pgr(c / self.rows, self.weak, self.strong)
            ids.append(round(ladder_release(start, score, self.step) / self.step) if score > start + self.step else NO)
        return np.array(ids, dtype=np.int64)

    def observe(self, answer: dict) -> None:
        self.best = answer["feedback"]["pgr"]


# --- the attack -------------------------------------------------------------------------------

def poisson_binomial(p: np.ndarray) -> np.ndarray:
    """P(exactly j of the rows are errors), j = 0..len(p), for independent error chances p."""
    dist = np.array([1.0])
    for q in p:
        dist = np.convolve(dist, [1 - q, q])
    return dist


def answer_entropy(ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Entropy (bits) of the answer per row of `ids` (padding levels x hypotheses, each row
    nondecreasing: answers are monotone in the count of right rows) under `weights`."""
    cum = np.cumsum(weights) / weights.sum()
    end = np.ones(ids.shape, bool)
    end[:, :-1] = ids[:, 1:] != ids[:, :-1]
    at_end = np.where(end, cum[None, :], 0.0)
    before = np.maximum.accumulate(np.concatenate([np.zeros((len(ids), 1)), at_end[:, :-1]], axis=1), axis=1)
    q = np.where(end, cum[None, :] - before, 0.0)
    return -(q * np.log2(np.where(q > 0, q, 1.0))).sum(axis=1)


@dataclass
class Group:
    """Unknown rows asked about together. `allowed[i, y]`: y errors among them is still possible
    if the offset is offsets[i]. `total`/`rest`: the group is the first part of a split one
    with `total` errors; `rest` are the other rows, whose count is total - y."""

    rows: list[int]
    prior: np.ndarray  # prior weight of y errors, y = 0..len(rows)
    allowed: np.ndarray
    total: int | None = None
    rest: list[int] | None = None

    def weight_by_offset(self) -> np.ndarray:
        return (self.allowed * self.prior[None, :]).sum(axis=1)


@dataclass
class Attack:
    """Adaptive group testing with known-label padding, decoded exactly.

    Unknowns: o, the number of right guesses among the unknown rows (one number), and per group
    under test its number of errors y. A query flips one group G (g rows) away from the guess
    and sets `padding` known rows right (the rest wrong): it has padding + o - g + 2y right
    rows, and the answer is a known function of that count. Every query touches o and one
    group, so the beliefs factor exactly: a weight per offset, and per group a table of the
    (offset, y) pairs no answer has ruled out."""

    guess: np.ndarray  # the label-free guess, 0/1 per row
    error_chance: np.ndarray  # the attacker's belief that the guess is wrong, per row
    known: dict[int, int]  # row -> label the attacker knows (head start, then what it learns)
    view: RecordView
    rng: np.random.Generator
    offsets: np.ndarray = field(init=False)  # values o may still take...
    offset_prior: np.ndarray = field(init=False)  # ... their prior weight, times calibration answers
    groups: list[Group] = field(default_factory=list, init=False)
    fresh: list[int] = field(init=False)  # unknown rows in no group, likeliest errors first
    queries: list[bytes] = field(default_factory=list, init=False)
    near_copies: int = field(default=0, init=False)
    improvements: int = field(default=0, init=False)
    used: int = field(default=0, init=False)
    budget: int = field(default=0, init=False)

    def __post_init__(self):
        unknown = [r for r in range(len(self.guess)) if r not in self.known]
        right = 1 - self.error_chance[unknown]
        # The spread of o: each row's chance, and how unsure the error rate itself is (it was
        # estimated on the known rows).
        rate = 1 - right.mean()
        rate_sd = math.sqrt(rate * (1 - rate) / max(1, len(self.known)))
        mean, sd = right.sum(), math.sqrt((right * (1 - right)).sum() + (len(unknown) * rate_sd) ** 2) + 1
        self.offsets = np.arange(max(0, int(mean - 4 * sd)), min(len(unknown), int(mean + 4 * sd)) + 1)
        self.offset_prior = np.exp(-0.5 * ((self.offsets - mean) / sd) ** 2)
        self.fresh = sorted(unknown, key=lambda r: -self.error_chance[r])

    def final_guess(self) -> np.ndarray:
        labels = self.guess.copy()
        for row, label in self.known.items():
            labels[row] = label
        return labels

    def run(self, submit, budget: int) -> int:
        """Query until the budget is spent, the scorer refuses, or no query can teach anything."""
        self.budget = budget
        while self.used < budget:
            plan = self._plan()
            if plan is None:
                break
            ids_now = self.view.ids_by_count()
            prediction = self._prediction(plan["padding"], plan["rows"])
            try:
                answer = submit(prediction)
            except BudgetExhausted:
                break
            self.used += 1
            observed = self.view.answer_id(answer)
            self.improvements += bool(observed != NO and isinstance(self.view, LadderView))
            self.view.observe(answer)
            counts = np.clip(plan["padding"] + self.offsets[:, None] - len(plan["rows"]) + 2 * plan["ys"][None, :],
                             0, len(ids_now) - 1)
            self._learn(plan, ids_now[counts] == observed)
        return self.used

    # --- beliefs --------------------------------------------------------------------------
    def _offset_weight(self, without: Group | None = None) -> np.ndarray:
        weight = self.offset_prior.copy()
        for group in self.groups:
            if group is not without:
                weight *= group.weight_by_offset()
        return weight

    def _candidates(self, calibration_stuck: bool = False):
        """(kind, group or size, rows flipped, y values, joint weights over offsets x y).
        Groups are tried once the offset is known to within a few values, or when no padding
        level can narrow it down any more: a group's answer mixes its count with the offset."""
        weight = self._offset_weight()
        live = weight > 0
        yield "calibrate", None, [], np.array([0]), weight[:, None]
        if live.sum() > JOINT_OFFSETS and not calibration_stuck:
            return
        for group in self.groups[-4:]:
            ys = np.arange(len(group.rows) + 1)
            certain = self._certain(group, live)
            if certain is None:  # its count still depends on the offset, or is unknown: ask again
                joint = self._offset_weight(without=group)[:, None] * group.allowed * group.prior[None, :]
                yield "group", group, group.rows, ys, joint
                continue
            g = len(group.rows)
            for h in sorted({1, g // 4, g // 2, (3 * g) // 4} & set(range(1, g))):
                part, rest = group.rows[:h], group.rows[h:]
                prior = self._split_prior(part, rest, certain)
                if prior.sum() > 0:
                    yield "split", (group, h, certain), part, np.arange(h + 1), weight[:, None] * prior[None, :]
        for g in GROUP_SIZES:
            if g > len(self.fresh):
                break
            prior = poisson_binomial(self.error_chance[self.fresh[:g]])
            yield "fresh", g, self.fresh[:g], np.arange(g + 1), weight[:, None] * prior[None, :]

    def _split_prior(self, part, rest, total) -> np.ndarray:
        prior = np.zeros(len(part) + 1)
        pb_part, pb_rest = poisson_binomial(self.error_chance[part]), poisson_binomial(self.error_chance[rest])
        for y in range(max(0, total - len(rest)), min(total, len(part)) + 1):
            prior[y] = pb_part[y] * pb_rest[total - y]
        return prior

    @staticmethod
    def _certain(group: Group, live: np.ndarray) -> int | None:
        """The group's count of errors if every live offset allows only that one."""
        possible = np.flatnonzero(group.allowed[live].any(axis=0) & (group.prior > 0))
        return int(possible[0]) if len(possible) == 1 else None

    # --- choosing a query -------------------------------------------------------------------
    def _plan(self) -> dict | None:
        """The query (and padding level) whose answer has the most entropy; on the Ladder, among
        those unlikely to land more than one level past the bar."""
        ids = self.view.ids_by_count()
        best = self._best_query(ids, self._candidates())
        if best is None or best["kind"] == "calibrate" and best["gain"] < 1e-6:
            best = self._best_query(ids, self._candidates(calibration_stuck=True))
        return best

    def _best_query(self, ids, candidates) -> dict | None:
        best, best_gain = None, 1e-9
        for kind, detail, rows, ys, joint in candidates:
            keep = joint.ravel() > 0
            if not keep.any():
                continue
            values = (self.offsets[:, None] - len(rows) + 2 * ys[None, :]).ravel()[keep]
            weights = joint.ravel()[keep]
            order = np.argsort(values, kind="stable")
            values, weights = values[order], weights[order] / weights.sum()
            padding = np.arange(len(self.known) + 1)
            low = ids[np.clip(padding + values[0], 0, len(ids) - 1)]
            high = ids[np.clip(padding + values[-1], 0, len(ids) - 1)]
            padding = padding[low != high]  # elsewhere every hypothesis gets the same answer
            if not len(padding):
                continue
            answers = ids[np.clip(padding[:, None] + values[None, :], 0, len(ids) - 1)]
            gain = answer_entropy(answers, weights)
            if self.view.bar:
                # A new best raises the bar for good, and the further past it a query lands, the
                # more of the padding's reach it uses up: keep overshooting unlikely.
                lowest = ids[ids != NO].min() if (ids != NO).any() else NO
                overshoot = ((answers > lowest + 1) * weights[None, :]).sum(axis=1)
                gain = np.where(overshoot <= OVERSHOOT, gain, gain * 1e-3)
            # Of equally good padding levels the middle one: a random half of the known rows set
            # right differs from the last query's half in about a quarter of them.
            ties = np.flatnonzero(gain >= gain.max() - 1e-9)
            i = int(ties[np.argmin(np.abs(padding[ties] - len(self.known) / 2))])
            if gain[i] > best_gain:
                best_gain = gain[i]
                best = {"kind": kind, "detail": detail, "rows": list(rows), "ys": ys, "padding": int(padding[i]),
                        "gain": float(gain[i])}
        return best

    def _prediction(self, padding: int, flip: list[int]) -> np.ndarray:
        """The guess, `flip` rows flipped, known rows right for a random `padding` of them and
        wrong for the rest; remembered to count near-copies (the old probe check's view)."""
        prediction = self.guess.copy()
        known = np.array(list(self.known), dtype=np.int64)
        if len(known):
            labels = np.array([self.known[r] for r in known], dtype=np.int64)
            right = np.zeros(len(known), bool)
            right[self.rng.choice(len(known), size=padding, replace=False)] = True
            prediction[known] = np.where(right, labels, 1 - labels)
        prediction[flip] = 1 - prediction[flip]
        packed = np.packbits(prediction.astype(bool))
        if self.queries:
            earlier = np.frombuffer(b"".join(self.queries), dtype=np.uint8).reshape(len(self.queries), -1)
            distance = np.unpackbits(earlier ^ packed, axis=1).sum(axis=1).min()
            self.near_copies += bool(0 < distance <= max(1, math.floor(0.02 * len(prediction))))
        self.queries.append(packed.tobytes())
        return prediction.astype(np.float64)

    # --- learning from an answer --------------------------------------------------------------
    def _learn(self, plan: dict, fits: np.ndarray) -> None:
        """Rule out the (offset, y) pairs the answer contradicts; settle what became certain."""
        kind, detail = plan["kind"], plan["detail"]
        if kind == "calibrate":
            self.offset_prior = self.offset_prior * fits[:, 0]
        elif kind == "group":
            detail.allowed &= fits
        elif kind == "fresh":
            rows, self.fresh = self.fresh[:detail], self.fresh[detail:]
            self.groups.append(Group(rows, poisson_binomial(self.error_chance[rows]), fits.copy()))
        else:
            group, h, total = detail
            self.groups.remove(group)
            part, rest = group.rows[:h], group.rows[h:]
            self.groups.append(Group(part, self._split_prior(part, rest, total), fits.copy(), total, rest))
        self._tidy()

    def _tidy(self) -> None:
        """Drop impossible offsets; learn groups whose count became certain (0 or all errors:
        every row; otherwise they wait to be split; the rest of a split follows its part)."""
        while True:
            live = self._offset_weight() > 0
            if not live.any():
                raise RuntimeError("no hypothesis explains the answers: the attacker's model is wrong")
            if not live.all():
                self.offsets, self.offset_prior = self.offsets[live], self.offset_prior[live]
                for group in self.groups:
                    group.allowed = group.allowed[live]
            for group in self.groups:
                y = self._certain(group, np.ones(len(self.offsets), bool))
                if y is None:
                    continue
                if y in (0, len(group.rows)) or group.rest is not None:
                    self.groups.remove(group)
                    if group.rest is not None:
                        rest_y = group.total - y
                        prior = poisson_binomial(self.error_chance[group.rest])
                        allowed = np.zeros((len(self.offsets), len(group.rest) + 1), bool)
                        allowed[:, rest_y] = True
                        self.groups.append(Group(group.rest, prior, allowed))
                        if y not in (0, len(group.rows)):  # the part waits to be split, as a whole
                            only = np.zeros_like(group.allowed)
                            only[:, y] = True
                            self.groups.append(Group(group.rows, poisson_binomial(self.error_chance[group.rows]), only))
                            break
                    if y in (0, len(group.rows)):
                        self._know(group.rows, wrong=y > 0)
                    break
            else:
                return

    def _know(self, rows: list[int], wrong: bool) -> None:
        for r in rows:
            self.known[r] = int(1 - self.guess[r]) if wrong else int(self.guess[r])
        if not wrong:  # they were right guesses among the unknown rows
            self.offsets = self.offsets - len(rows)


def attack_scorer(scorer: Scorer, view: RecordView, testbed: str, guess, chance_of_error, head_start: dict,
                  budget: int, submitters: list[str], analyst: str | None, seed: int) -> Attack:
    ids = eval_ids(testbed, scorer.home, "validation")
    attack = Attack(guess.copy(), chance_of_error, dict(head_start), view, np.random.default_rng(seed))
    calls = iter(range(10**9))

    def submit(prediction):
        who = submitters[next(calls) % len(submitters)]
        return scorer.submit(who, testbed, ids, prediction, analyst=analyst)

    attack.run(submit, budget)
    return attack


def figures(attack: Attack, truth: np.ndarray, guess: np.ndarray, head_start: dict, bits: float,
            bits_per_answer: float | None, seconds: float) -> dict:
    scored = np.array([r not in head_start for r in range(len(truth))])
    final = attack.final_guess()
    learnt = [r for r in attack.known if r not in head_start]
    chance = int((guess == truth)[scored].sum())
    right = int((final == truth)[scored].sum())
    error_rate = 1 - chance / scored.sum()
    bound = float(labels_beyond_chance_bound(int(scored.sum()), error_rate, bits))
    out = {"queries": int(attack.used), "labels_determined": len(learnt),
           "determined_correct": int(sum(attack.known[r] == truth[r] for r in learnt)),
           "right": right, "chance": chance, "beyond_chance": right - chance,
           "beyond_chance_per_100_queries": round(100 * (right - chance) / max(1, attack.used), 2),
           "bits_bound": round(bits, 1),
           "labels_beyond_chance_bound": round(bound, 1),
           "near_copies": attack.near_copies, "seconds": round(seconds, 1)}
    if bits_per_answer is not None:
        out["bits_per_answer"] = round(bits_per_answer, 2)
    if isinstance(attack.view, LadderView):
        out["improvements"] = int(attack.improvements)
    return out


def run(testbed: str, home: Path, head_start_rows: int, seed: int = 0, old_budget: int = 1000,
        new_config: ScorerConfig = ScorerConfig(), teacher_seed: int = 1) -> dict:
    """The attack against the old answers, the Ladder of `new_config`, and (a control: is it
    the step that stops the attack?) the same Ladder with a step of one row; the figures."""
    old = Scorer(home, ScorerConfig(queries_per_analyst=old_budget, baseline_seeds=new_config.baseline_seeds))
    public_ids = load_public(testbed, home)["test"]["id"].tolist()
    ids = eval_ids(testbed, home, "validation")
    truth_by_id = load_sealed(testbed, home, "validation").set_index("id")["label"]
    truth = binary_labels(truth_by_id.loc[ids]).astype(np.int64)  # for measuring only
    teacher = weak_labels(testbed, home, old.teacher, teacher_seed).probs["test"][eval_rows(public_ids, "validation")]
    guess = (teacher > 0.5).astype(np.int64)
    rng = np.random.default_rng(seed)
    head = {int(r): int(truth[r]) for r in rng.choice(len(ids), size=head_start_rows, replace=False)}
    # The attacker's error model: the teacher's doubt, scaled to the error rate it sees on the
    # rows it knows (the teacher's probabilities are far from calibrated).
    doubt = np.minimum(teacher, 1 - teacher)
    seen = np.mean([guess[r] != label for r, label in head.items()]) if head else doubt.mean()
    chance_of_error = np.clip(doubt * max(seen, 0.02) / doubt.mean(), 0.01, 0.5)
    rows = len(ids)

    start = time.perf_counter()
    old_view = RecordView(old, testbed, rows)
    old_attack = attack_scorer(old, old_view, testbed, guess, chance_of_error, head, old_budget,
                               [f"attacker-{uuid.uuid4().hex[:8]}"], None, seed)
    bits_each = math.log2(len(set(old_view.ids_by_count().tolist())))
    report = {"rows": rows, "head_start": head_start_rows, "guess": f"teacher seed {teacher_seed}",
              "old": {"budget": old_budget, "resolution": old.config.resolution,
                      **figures(old_attack, truth, guess, head, bits_each * old_attack.used, bits_each,
                                time.perf_counter() - start)}}

    def ladder(config: ScorerConfig) -> dict:
        start = time.perf_counter()
        scorer = Scorer(home, config)
        bound = scorer.information_bound(testbed)
        campaign = f"campaign-{uuid.uuid4().hex[:8]}"  # a new analyst: a fresh Ladder and budget
        attack = attack_scorer(scorer, LadderView(scorer, testbed, rows), testbed, guess, chance_of_error, head,
                               config.queries_per_analyst, [f"{campaign}/researcher-{i}" for i in range(3)],
                               campaign, seed)
        return {"budget": config.queries_per_analyst, "step": bound["step"], "levels": bound["levels"],
                **figures(attack, truth, guess, head, bound["bits"], None, time.perf_counter() - start)}

    report["ladder"] = ladder(new_config)
    base = old.baselines(testbed)["validation"]
    one_row = round(1 / (rows * (base["strong_acc"] - base["weak_acc"])), 4)
    report["ladder_one_row_step"] = ladder(replace(new_config, ladder_step_se=0.0, ladder_min_step=one_row))
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", default="taxonomy")
    parser.add_argument("--head-start", type=int, default=50, help="rows whose labels the attacker knows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=None, help="an aar home to use (default: a temporary one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(args.home) if args.home else Path(tmp)
        start = time.perf_counter()
        ensure_testbed(args.testbed, home)
        Scorer(home, ScorerConfig()).information_bound(args.testbed)  # testbed, vectors, weak labels, baselines
        prepare_seconds = time.perf_counter() - start
        report = {"benchmark": "label_recovery", "testbed": args.testbed,
                  "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                  "prepare_seconds": round(prepare_seconds, 1),
                  **run(args.testbed, home, args.head_start, args.seed)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
