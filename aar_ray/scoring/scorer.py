"""The scorer: the only code that reads sealed labels.

A submission is a full set of predictions (P(True)/P(A)) for one testbed's validation rows,
scored against *fixed* baselines (weak and strong accuracy averaged over several seeds, as the
released sandbox does). An answer has two parts, for two readers:

- **The record**, for the operator (MLflow, the audit log, reports): `transfer_acc`, `weak_acc`,
  `strong_acc` and `pgr`, rounded to 0.01, and `flags` when there are any.
- **`feedback`**, the ONLY part a researcher may be shown (the researcher tools pass on nothing
  else): `{"pgr": released best or None, "improved": bool, "step": eta, "queries_left": n,
  "flags": [...]}`. It is a reusable holdout, the Ladder (Blum & Hardt 2015, see ladder.py):
  per analyst and testbed, a submission whose PGR beats the analyst's released best by more
  than `step` becomes the new best, released rounded to the step grid (`improved: true`);
  any other answer repeats the best (`improved: false`). The Ladder starts at
  `ladder_floor` (PGR 0, the teacher): `pgr` is None until something beats it by a step.

Why two parts: a score shown on every answer leaks about one label bit per answer whatever it is
rounded to. Group tests (rows under test plus padding rows of known labels, steered to a rounding
boundary) read all 1,057 validation labels of an embedded testbed in 564 answers of the 0.01
PGR, every query far from the others, so the near-copy detector this scorer used to run (flag
and throttle resubmissions that change a few rows) never fired; it is gone. What bounds leakage
now is information: through the Ladder, Q answers carry at most log2 C(Q + M, M) bits in all
(M = the values the step grid can release between the floor and a perfect answer: 19-25 on
taxonomy, so 133-166 bits for the default 1,000 queries), however they are built;
`information_bound(testbed)` gives the figure, benchmarks/label_recovery.py measures an attack
against it (0 labels beyond chance; all of them through the record). The step is one standard
error of the split's PGR (0.05-0.07 on taxonomy): a finer one shows noise as progress and
lets more levels, so more bits, through (with a step of one row the same attack reads 14-204
labels beyond chance). The record is exact to 0.01 and must stay on the operator's side; so must
anything derived from it (MLflow, a forum leaderboard of mean PGR).

An **analyst** is whoever sees the answers: several researchers of one campaign share results,
so they are one analyst (`analyst=` the campaign; by default the submitter). Each analyst has a
budget of scored queries (`queries_per_analyst`; every seed's submission is one), and the
Ladder's best is the analyst's, whoever of them submitted. Budgets, Ladder bests and keyed
answers are rebuilt from the audit log after a restart. A malformed submission is rejected
before it costs anything.

The operator (baseline sweeps, holdout, reports) is not a researcher: with the operator key
(which lives in the sealed store, see `read_operator_key`) a submission gets the plain record,
charges no budget and touches no Ladder. Holdout is scored only with that key.

Shortcut checks (checks.py) run on every submission: one that matches a label-free shortcut is
scored but flagged. Flags go into the audit log, the record (`flags`, only when there are any)
and the feedback (a flag depends on the predictions and public data only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aar_ray.errors import UserError
from aar_ray.models import StudentConfig, TeacherConfig, resolve_student_config, student_factory
from aar_ray.models.artifacts import binary_labels, content_key, weak_labels
from aar_ray.scoring.checks import (hard_predictions, matching_shortcuts, predictions_digest,
                                    shortcut_predictions)
from aar_ray.scoring.ladder import ladder_levels, ladder_release, ladder_step, transcript_bits
from aar_ray.testbeds import EVAL_SPLITS, eval_ids, eval_rows, load_public, load_sealed, testbed_meta

log = logging.getLogger(__name__)


@dataclass
class ScorerConfig:
    # Scored validation submissions per analyst (a campaign), over all testbeds; each seed is
    # one. A laptop campaign (3 researchers x 6 experiments x <= 5 seeds = 90) and one of ~100
    # experiments x 5 seeds (500) stay under it. Through the Ladder the bits leaked grow only
    # with log(queries), so the budget is a cost cap more than the information bound.
    queries_per_analyst: int = 1000
    baseline_seeds: int = 5  # weak and strong accuracy are averaged over seeds 1..N
    resolution: float = 0.01  # the record (operator side) is rounded to this
    ladder_floor: float = 0.0  # the Ladder starts here: PGR 0 is the teacher
    ladder_step_se: float = 1.0  # the step, in standard errors of the validation PGR (see ladder_step)
    ladder_min_step: float = 0.02  # ... but never finer than this
    shortcut_agreement: float = 0.98  # flag hard predictions this close to a label-free shortcut


class ScoreError(UserError, ValueError):
    """A submission the scorer refuses; it used none of the analyst's budget."""


class BudgetExhausted(ScoreError):
    pass


def pgr(transfer_acc: float, weak_acc: float, strong_acc: float) -> float:
    return (transfer_acc - weak_acc) / (strong_acc - weak_acc)


RECORD_FIELDS = ("transfer_acc", "weak_acc", "strong_acc", "pgr")


class Scorer:
    def __init__(self, home: str | Path, config: ScorerConfig = ScorerConfig(),
                 teacher: TeacherConfig = TeacherConfig(), student: StudentConfig = StudentConfig()):
        self.home = Path(home)
        self.config, self.teacher, self.student = config, teacher, student
        self.sealed = self.home / "sealed"
        self.sealed.mkdir(parents=True, exist_ok=True)
        self.audit_path = self.sealed / "audit.jsonl"
        self._lock = threading.Lock()  # an actor may serve calls from several threads
        self._used, self._answers, self._best = self._replay_audit()
        self._shortcuts: dict[tuple, dict[str, list[np.ndarray]]] = {}
        self._split_cache: dict[tuple, tuple[list, pd.Series]] = {}
        self._operator_key = read_operator_key(self.home)

    # --- baselines --------------------------------------------------------------------------
    def baselines(self, testbed: str) -> dict[str, dict[str, float]]:
        """{split: {weak_acc, strong_acc}} for validation and holdout, computed once and kept
        in the sealed store (the strong ceiling trains on true labels, so it is computed here)."""
        student = resolve_student_config(self.student, testbed, self.home)
        seeds = list(range(1, self.config.baseline_seeds + 1))
        key = content_key(testbed_meta(testbed, self.home)["content_hash"], asdict(self.teacher),
                          asdict(student), seeds)
        path = self.sealed / testbed / f"baselines-{key}.json"
        if not path.exists():
            path.write_text(json.dumps(self._compute_baselines(testbed, student, seeds), indent=2))
        return json.loads(path.read_text())

    def _compute_baselines(self, testbed: str, student: StudentConfig, seeds: list[int]) -> dict:
        """Teacher and ceiling predict the whole public test split, as methods do; each split's
        accuracy is taken on its own rows of it."""
        test_ids = load_public(testbed, self.home)["test"]["id"].tolist()
        rows = {s: eval_rows(test_ids, s) for s in EVAL_SPLITS}
        labels = {}
        for s in EVAL_SPLITS:
            split_ids, by_id = self._split(testbed, s)
            labels[s] = binary_labels(by_id.loc[split_ids])  # in the public test order, as `rows[s]`
        unlabel = binary_labels(load_sealed(testbed, self.home, "train_unlabel")["label"])
        weak = {s: [] for s in EVAL_SPLITS}
        strong = {s: [] for s in EVAL_SPLITS}
        for seed in seeds:
            teacher_probs = weak_labels(testbed, self.home, self.teacher, seed).probs["test"]
            new_student = student_factory(testbed, self.home, student, seed)
            ceiling_probs = new_student().fit("train_unlabel", unlabel).predict_proba("test")
            for s in EVAL_SPLITS:
                weak[s].append(_accuracy(teacher_probs[rows[s]], labels[s]))
                strong[s].append(_accuracy(ceiling_probs[rows[s]], labels[s]))
        return {s: {"weak_acc": float(np.mean(weak[s])), "strong_acc": float(np.mean(strong[s])),
                    "weak_acc_sd": float(np.std(weak[s])), "strong_acc_sd": float(np.std(strong[s])),
                    "seeds": seeds} for s in EVAL_SPLITS}

    # --- the Ladder ---------------------------------------------------------------------------
    def ladder_step(self, testbed: str) -> float:
        """The Ladder's step on `testbed`, in PGR units (see ladder.ladder_step): a fixed number
        per testbed version, shown to researchers in every feedback."""
        base = self.baselines(testbed)["validation"]
        return ladder_step(len(self._split(testbed, "validation")[0]), base["weak_acc"],
                           base["strong_acc"], self.config.ladder_step_se,
                           self.config.ladder_min_step, self.config.resolution)

    def information_bound(self, testbed: str) -> dict:
        """What an analyst's whole budget of feedback on `testbed` can carry: M releasable
        values (from the floor to the PGR of a perfect answer), Q queries, and the bits of
        every possible transcript, log2 C(Q + M, M)."""
        base = self.baselines(testbed)["validation"]
        step = self.ladder_step(testbed)
        levels = ladder_levels(self.config.ladder_floor, pgr(1.0, base["weak_acc"], base["strong_acc"]), step)
        queries = self.config.queries_per_analyst
        return {"step": step, "floor": self.config.ladder_floor, "levels": levels, "queries": queries,
                "rows": len(self._split(testbed, "validation")[0]),
                "bits": round(transcript_bits(queries, levels), 1)}

    def released_best(self, analyst: str, testbed: str) -> float | None:
        return self._best.get((analyst, testbed))

    # --- submissions ------------------------------------------------------------------------
    def submit(self, submitter: str, testbed: str, ids, probs, key: str | None = None,
               analyst: str | None = None, operator_key: str | None = None) -> dict:
        """Score predictions for the validation split: the record and, for a researcher, the
        `feedback` they may be shown (see the module docstring). `analyst` is whose budget and
        Ladder the query counts against (a campaign; default the submitter). With the
        `operator_key`, the plain record: no budget, no Ladder, no feedback. A `key` makes the
        call idempotent: the same key again returns the first answer and costs nothing, so a
        retried or resumed experiment is never counted twice."""
        if operator_key is not None:
            self._check_operator_key(operator_key, submitter, testbed, "validation", key)
            return self._score(submitter, testbed, "validation", ids, probs, key, analyst=None)
        return self._score(submitter, testbed, "validation", ids, probs, key, analyst=analyst or submitter)

    def score_holdout(self, operator_key: str, submitter: str, testbed: str, ids, probs,
                      key: str | None = None) -> dict:
        """Score predictions for the holdout split: operator only, outside any budget."""
        self._check_operator_key(operator_key, submitter, testbed, "holdout", key)
        return self._score(submitter, testbed, "holdout", ids, probs, key, analyst=None)

    def remaining(self, analyst: str) -> int:
        """Queries the analyst (a campaign, or a submitter scored without one) has left."""
        return self.config.queries_per_analyst - self._used.get(analyst, 0)

    def _check_operator_key(self, operator_key, submitter, testbed, split, key) -> None:
        if not secrets.compare_digest(str(operator_key), self._operator_key):
            self._audit(submitter, testbed, split, None, key, "rejected: wrong operator key")
            raise ScoreError("holdout is scored only with the operator key (aar score-holdout)" if split == "holdout"
                             else "wrong operator key: only the operator gets the plain record; "
                                  "researchers submit without one and get feedback")

    def _score(self, submitter, testbed, split, ids, probs, key, analyst: str | None) -> dict:
        """One submission; `analyst` None is the operator's (plain record, nothing charged)."""
        with self._lock:
            if key is not None and key in self._answers:
                self._audit(submitter, testbed, split, None, key, "replayed", analyst=analyst)
                return self._answers[key]
            try:
                ids, probs, hard = self._validated(testbed, split, ids, probs)
                base = self.baselines(testbed)[split]
                if base["strong_acc"] <= base["weak_acc"]:
                    raise ScoreError(f"{testbed!r} has no weak-to-strong gap (ceiling {base['strong_acc']:.3f} "
                                     f"<= teacher {base['weak_acc']:.3f}); PGR is undefined for this student")
                if analyst is not None and self.remaining(analyst) <= 0:
                    raise BudgetExhausted(f"{analyst!r} has used all {self.config.queries_per_analyst} "
                                          "scored queries (each seed of an experiment is one)")
            except ScoreError as err:
                self._audit(submitter, testbed, split, None, key, f"rejected: {err}", analyst=analyst)
                raise
            flags = self._flags(testbed, split, hard)
            truth = self._split(testbed, split)[1].loc[ids]
            acc = _accuracy(probs, binary_labels(truth))
            exact_pgr = pgr(acc, base["weak_acc"], base["strong_acc"])
            result = {"transfer_acc": self._round(acc), "weak_acc": self._round(base["weak_acc"]),
                      "strong_acc": self._round(base["strong_acc"]), "pgr": self._round(exact_pgr)}
            if flags:
                result["flags"] = flags  # only when there are any: the record's usual keys stay as they were
            if analyst is not None:
                result["feedback"] = self._climb(analyst, testbed, exact_pgr, flags)
            self._audit(submitter, testbed, split, probs, key, "scored", analyst=analyst,
                        operator=analyst is None, exact_acc=acc,
                        hard_predictions_sha256=predictions_digest(hard), **result)
            if key is not None:
                self._answers[key] = result
            return result

    def _climb(self, analyst: str, testbed: str, exact_pgr: float, flags: list[str]) -> dict:
        """Charge one query and answer it on the analyst's Ladder: the only answer a researcher
        sees. Everything in it but `pgr` and `improved` is label-free."""
        step = self.ladder_step(testbed)
        before = self._best.get((analyst, testbed))
        start = self.config.ladder_floor if before is None else before
        released = ladder_release(start, exact_pgr, step)
        improved = exact_pgr > start + step
        if improved:
            self._best[(analyst, testbed)] = released
        self._used[analyst] = self._used.get(analyst, 0) + 1
        return {"pgr": self._best.get((analyst, testbed)), "improved": improved, "step": step,
                "queries_left": self.remaining(analyst), "flags": list(flags)}

    def _flags(self, testbed: str, split: str, hard: np.ndarray) -> list[str]:
        try:
            shortcuts = self._shortcuts_for(testbed, split)
        except Exception as err:  # noqa: BLE001 - a broken check must not stop scoring, nor pass unseen
            log.warning("shortcut check on %s (%s) failed; the result is flagged", testbed, split, exc_info=True)
            return [f"shortcut_check_failed:{type(err).__name__}"]
        return matching_shortcuts(hard, shortcuts, self.config.shortcut_agreement)

    def _shortcuts_for(self, testbed: str, split: str) -> dict[str, list[np.ndarray]]:
        """Label-free shortcut answers, computed once per testbed version and split."""
        cache_key = (testbed, testbed_meta(testbed, self.home)["content_hash"], split)
        if cache_key not in self._shortcuts:
            self._shortcuts[cache_key] = shortcut_predictions(
                testbed, self.home, split, self.teacher, resolve_student_config(self.student, testbed, self.home),
                range(1, self.config.baseline_seeds + 1))
        return self._shortcuts[cache_key]

    def _split(self, testbed: str, split: str) -> tuple[list, pd.Series]:
        """(ids of the split in public test order, sealed labels by id), read once per testbed
        version: reading the parquet files was most of a submission's cost."""
        cache_key = (testbed, testbed_meta(testbed, self.home)["content_hash"], split)
        if cache_key not in self._split_cache:
            expected = eval_ids(testbed, self.home, split)
            labels = load_sealed(testbed, self.home, split).set_index("id")["label"]
            self._split_cache[cache_key] = (expected, labels)
        return self._split_cache[cache_key]

    def _validated(self, testbed: str, split: str, ids, probs) -> tuple[list, np.ndarray, np.ndarray]:
        """(ids, probs, hard predictions in the public row order). The order matters to the
        shortcut checks: a submitter may send rows in any order, and must not evade them by it."""
        try:
            expected, _ = self._split(testbed, split)
        except Exception as err:
            raise ScoreError(str(err)) from None
        ids = list(ids)
        try:
            probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ScoreError("predictions must be numbers: P(True) for binary rows, P(A) for "
                             "comparison rows") from None
        if len(probs) != len(ids):
            raise ScoreError(f"{len(probs)} predictions for {len(ids)} ids")
        if len(ids) != len(expected) or set(ids) != set(expected) or len(set(ids)) != len(ids):
            raise ScoreError(f"predictions must cover each of the {len(expected)} {split} ids of "
                             f"{testbed!r} exactly once; got {len(ids)} ids ({len(set(ids))} distinct)")
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
            raise ScoreError("predictions must be probabilities in [0, 1] (no NaN or inf)")
        in_public_order = probs[pd.Index(ids).get_indexer(expected)]
        return ids, probs, hard_predictions(in_public_order)

    def _round(self, value: float) -> float:
        r = self.config.resolution
        return round(round(value / r) * r, 6)

    # --- audit log --------------------------------------------------------------------------
    def _audit(self, submitter, testbed, split, probs, key, outcome, **fields) -> None:
        entry = {"time": time.time(), "submitter": submitter, "testbed": testbed, "split": split,
                 "key": key, "outcome": outcome, **fields}
        if probs is not None:
            entry["predictions_sha256"] = hashlib.sha256(np.asarray(probs).tobytes()).hexdigest()
        with open(self.audit_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def audit_log(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def _replay_audit(self) -> tuple[dict[str, int], dict[str, dict], dict[tuple, float]]:
        """Budgets, keyed answers and Ladder bests survive a restart: all are rebuilt from the
        audit log. (An entry from before analysts existed counts for its submitter.)"""
        used: dict[str, int] = {}
        answers: dict[str, dict] = {}
        best: dict[tuple, float] = {}
        for entry in self.audit_log():
            if entry["outcome"] != "scored":
                continue
            analyst = entry.get("analyst", entry["submitter"])
            if entry["split"] == "validation" and not entry.get("operator"):
                used[analyst] = used.get(analyst, 0) + 1
            feedback = entry.get("feedback")
            if feedback and feedback["improved"]:
                best[(analyst, entry["testbed"])] = feedback["pgr"]
            if entry.get("key"):
                answers[entry["key"]] = {k: entry[k] for k in (*RECORD_FIELDS, "flags", "feedback") if k in entry}
        return used, answers, best


def read_operator_key(home: str | Path) -> str:
    """The secret that unlocks holdout scoring and the operator's plain records; made on first
    use, readable by its owner only."""
    path = Path(home) / "sealed" / "operator.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
        path.chmod(0o600)
    return path.read_text().strip()


def _accuracy(probs, labels) -> float:
    return float(((np.asarray(probs) > 0.5) == (np.asarray(labels) > 0.5)).mean())
