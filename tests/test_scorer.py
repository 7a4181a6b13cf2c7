"""The scorer: a rounded record for the operator, Ladder feedback for researchers, one query
budget per analyst, bad submissions, and holdout and plain records behind the operator key."""

import math
import time

import numpy as np
import pandas as pd
import pytest

from aar_ray.models.artifacts import binary_labels
from aar_ray.scoring import BudgetExhausted, Scorer, ScoreError, ScorerConfig, read_operator_key
from aar_ray.scoring.ladder import labels_beyond_chance_bound, ladder_levels, ladder_step, transcript_bits
from aar_ray.testbeds import load_public, load_sealed

FAST = ScorerConfig(queries_per_analyst=3, baseline_seeds=2)
RECORD = {"transfer_acc", "weak_acc", "strong_acc", "pgr"}
FEEDBACK = {"pgr", "improved", "step", "queries_left", "flags"}


@pytest.fixture()
def scorer(small_home):
    (small_home / "sealed" / "audit.jsonl").unlink(missing_ok=True)
    return Scorer(small_home, FAST)


def _truth(home, split="validation", testbed="tax-small"):
    sealed = load_sealed(testbed, home, split)
    return sealed["id"].tolist(), binary_labels(sealed["label"])


def test_perfect_predictions_score_near_full_recovery_and_are_rounded(scorer, small_home):
    ids, labels = _truth(small_home)
    result = scorer.submit("alice", "tax-small", ids, labels)
    assert set(result) == RECORD | {"feedback"}
    assert result["transfer_acc"] == 1.0
    assert result["weak_acc"] < result["strong_acc"]
    for key in RECORD:
        assert abs(result[key] * 100 - round(result[key] * 100)) < 1e-9, key
    feedback = result["feedback"]
    assert set(feedback) == FEEDBACK and feedback["queries_left"] == 2 and feedback["improved"]
    assert feedback["step"] == scorer.ladder_step("tax-small") and feedback["flags"] == []
    assert abs(feedback["pgr"] - result["pgr"]) <= feedback["step"] / 2 + 0.01  # on the step's grid


def test_flipping_one_prediction_is_invisible_in_the_rounded_score(scorer, small_home):
    ids, labels = _truth(small_home)
    probs = labels.copy()
    probs[:40] = 1 - probs[:40]
    first = scorer.submit("bob", "tax-small", ids, probs)
    probs[40] = 1 - probs[40]  # one more wrong: the exact count moves by one
    second = scorer.submit("bob", "tax-small", ids, probs)
    assert first["transfer_acc"] == second["transfer_acc"]
    assert second["feedback"]["pgr"] == first["feedback"]["pgr"] and not second["feedback"]["improved"]


def test_the_ladder_shows_a_new_best_only_past_the_step_and_rounded_to_it(scorer, small_home):
    """Feedback moves only when a submission beats the analyst's released best by more than the
    step, and then shows it on the step's grid; otherwise it repeats the best, whatever the
    submission scored (worse, or better by less than a step)."""
    scorer = Scorer(small_home, ScorerConfig(queries_per_analyst=10, baseline_seeds=2))
    ids, labels = _truth(small_home)
    step, base = scorer.ladder_step("tax-small"), scorer.baselines("tax-small")["validation"]
    gap = base["strong_acc"] - base["weak_acc"]

    def at_least(pgr_value):  # predictions with the fewest right rows that reach this PGR
        right = int(np.ceil((base["weak_acc"] + pgr_value * gap) * len(ids)))
        probs = labels.copy()
        probs[right:] = 1 - probs[right:]
        return probs

    answers = [scorer.submit("lad", "tax-small", ids, at_least(k * step))["feedback"]
               for k in (-5, 0.5, 2.2, 2.7, 5, 3)]
    shown = [(a["pgr"], a["improved"]) for a in answers]
    assert shown == [(None, False),  # far below the teacher
                     (None, False),  # above the teacher (the floor), but by less than a step
                     (round(2 * step, 6), True),  # a new best, on the step grid
                     (round(2 * step, 6), False),  # better, but by less than a step: the best again
                     (round(5 * step, 6), True),
                     (round(5 * step, 6), False)]  # a worse result never lowers the best


@pytest.mark.parametrize("mutate, message", [
    (lambda ids, p: (ids[:-1], p[:-1]), "exactly once"),
    (lambda ids, p: (ids, p[:-1]), "predictions for"),
    (lambda ids, p: (ids[:-1] + ids[:1], p), "exactly once"),
    (lambda ids, p: (ids, np.where(np.arange(len(p)) == 0, np.nan, p)), "no NaN"),
    (lambda ids, p: (ids, p * 2), r"in \[0, 1\]"),
    (lambda ids, p: (ids, ["yes"] * len(p)), "must be numbers"),
])
def test_bad_submissions_are_rejected_and_cost_nothing(scorer, small_home, mutate, message):
    ids, labels = _truth(small_home)
    with pytest.raises(ScoreError, match=message):
        scorer.submit("carol", "tax-small", *mutate(ids, labels))
    assert scorer.remaining("carol") == FAST.queries_per_analyst
    assert scorer.audit_log()[-1]["outcome"].startswith("rejected")


def test_unlabelled_and_holdout_rows_cannot_be_scored_by_submitters(scorer, small_home):
    for split in ("train_unlabel", "holdout"):
        ids, labels = _truth(small_home, split)
        with pytest.raises(ScoreError, match="validation ids"):
            scorer.submit("dave", "tax-small", ids, labels)
    assert scorer.remaining("dave") == FAST.queries_per_analyst


def test_budget_is_enforced_per_analyst_and_survives_a_restart(scorer, small_home):
    ids, labels = _truth(small_home)
    for _ in range(3):
        scorer.submit("erin", "tax-small", ids, labels)  # no analyst given: her own budget
    with pytest.raises(BudgetExhausted):
        scorer.submit("erin", "tax-small", ids, labels)
    assert scorer.submit("frank", "tax-small", ids, labels)["feedback"]["queries_left"] == 2
    # Researchers of one campaign draw on one budget, whoever submits.
    assert scorer.submit("r1", "tax-small", ids, labels, analyst="camp")["feedback"]["queries_left"] == 2
    assert scorer.submit("r2", "tax-small", ids, labels, analyst="camp")["feedback"]["queries_left"] == 1
    scorer.submit("r3", "tax-small", ids, labels, analyst="camp")
    with pytest.raises(BudgetExhausted, match="camp"):
        scorer.submit("r4", "tax-small", ids, labels, analyst="camp")
    assert scorer.remaining("r1") == FAST.queries_per_analyst  # not charged to the researcher
    restarted = Scorer(small_home, FAST)
    assert restarted.remaining("erin") == 0 and restarted.remaining("frank") == 2
    assert restarted.remaining("camp") == 0


def test_researchers_of_one_campaign_climb_one_ladder(scorer, small_home):
    """The Ladder's best is the analyst's: a researcher whose result is below a colleague's best
    sees that best and 'not better', so two researchers cannot probe twice as finely."""
    ids, labels = _truth(small_home)
    good = scorer.submit("ann", "tax-small", ids, labels, analyst="lab")["feedback"]
    assert good["improved"] and good["pgr"] is not None
    worse = labels.copy()
    worse[:10] = 1 - worse[:10]
    answer = scorer.submit("ben", "tax-small", ids, worse, analyst="lab")["feedback"]
    assert answer["pgr"] == good["pgr"] and not answer["improved"]
    # Another campaign has a Ladder of its own.
    other = scorer.submit("ben", "tax-small", ids, worse, analyst="other-lab")["feedback"]
    assert other["improved"] and other["pgr"] <= good["pgr"]
    assert Scorer(small_home, FAST).released_best("lab", "tax-small") == good["pgr"]


def test_holdout_needs_the_operator_key_and_uses_no_budget(scorer, small_home):
    ids, labels = _truth(small_home, "holdout")
    with pytest.raises(ScoreError, match="operator key"):
        scorer.score_holdout("guess", "grace", "tax-small", ids, labels)
    result = scorer.score_holdout(read_operator_key(small_home), "grace", "tax-small", ids, labels)
    assert result["transfer_acc"] == 1.0 and set(result) == RECORD
    assert scorer.remaining("grace") == FAST.queries_per_analyst


def test_the_operator_gets_the_plain_record_for_free_and_leaves_no_trace_on_a_ladder(scorer, small_home):
    """Baseline sweeps submit many seeds of each method: with the operator key they are neither
    charged nor put on a Ladder, and get the record only (no feedback)."""
    ids, labels = _truth(small_home)
    key = read_operator_key(small_home)
    for _ in range(FAST.queries_per_analyst + 2):  # past any budget
        result = scorer.submit("baseline", "tax-small", ids, labels, operator_key=key)
        assert set(result) == RECORD and result["transfer_acc"] == 1.0
    assert scorer.remaining("baseline") == FAST.queries_per_analyst
    assert scorer.released_best("baseline", "tax-small") is None
    assert scorer.audit_log()[-1]["operator"] is True
    with pytest.raises(ScoreError, match="operator key"):
        scorer.submit("baseline", "tax-small", ids, labels, operator_key="guess")
    assert scorer.audit_log()[-1]["outcome"] == "rejected: wrong operator key"
    assert Scorer(small_home, FAST).remaining("baseline") == FAST.queries_per_analyst


def test_fixed_baselines_are_computed_once_and_kept_sealed(scorer, small_home):
    first = scorer.baselines("pref-small")
    assert first == Scorer(small_home, FAST).baselines("pref-small")
    assert list((small_home / "sealed" / "pref-small").glob("baselines-*.json"))
    assert first["validation"]["weak_acc"] < first["validation"]["strong_acc"] - 0.1


def test_no_public_file_carries_a_sealed_label(small_home):
    for name in ("tax-small", "pref-small"):
        public = load_public(name, small_home)
        for split, frame in public.items():
            assert "label" not in frame.columns, split
    for path in (small_home / "cache").rglob("*.parquet"):
        assert "label" not in pd.read_parquet(path).columns


@pytest.mark.slow
def test_scorer_is_one_named_actor_for_the_cluster(local_ray, small_home):
    from aar_ray.scoring import scorer_actor

    actor = scorer_actor(small_home, FAST)
    same = local_ray.get_actor("aar-scorer", namespace="aar")
    ids, labels = _truth(small_home)
    result = local_ray.get(same.submit.remote("heidi", "tax-small", ids, labels))
    assert result["transfer_acc"] == 1.0
    assert local_ray.get(actor.remaining.remote("heidi")) == FAST.queries_per_analyst - 1


def test_a_keyed_submission_is_answered_once_and_charged_once_even_after_a_restart(scorer, small_home):
    ids, labels = _truth(small_home)
    first = scorer.submit("ivan", "tax-small", ids, labels, key="c/ivan/call1/seed1")
    again = Scorer(small_home, FAST).submit("ivan", "tax-small", ids, 1 - labels, key="c/ivan/call1/seed1")
    assert again == first and Scorer(small_home, FAST).remaining("ivan") == 2
    assert [e["outcome"] for e in scorer.audit_log()[-2:]] == ["scored", "replayed"]


@pytest.mark.slow
def test_a_killed_scorer_restarts_and_keyed_resubmissions_are_not_counted_twice(local_ray, small_home):
    from aar_ray.experiments import ExperimentSpec, MethodResult, score_result
    from aar_ray.scoring import scorer_actor

    actor = scorer_actor(small_home, FAST)
    ids, labels = _truth(small_home)
    spec = ExperimentSpec("tax-small", "vanilla_w2s", 1, str(small_home))
    result = MethodResult(ids, labels, {}, 0.0, 0.0)
    first, _ = score_result(actor, "judy", spec, result, key="c/judy/x/seed1")
    local_ray.kill(actor, no_restart=False)  # dies; Ray restarts it
    again, error = score_result(actor, "judy", spec, result, key="c/judy/x/seed1")
    assert error is None and again == first
    assert _once_restarted(local_ray, lambda: actor.remaining.remote("judy")) == FAST.queries_per_analyst - 1


def _once_restarted(ray, call, seconds=60):
    """The call's answer once the restarted actor serves again (a kill returns before death)."""
    deadline = time.time() + seconds
    while True:
        try:
            return ray.get(call())
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def test_a_testbed_with_no_gap_is_refused_in_the_audit_log_and_costs_nothing(scorer, small_home, monkeypatch):
    # A student no better than its teacher (here: baselines that say so) leaves PGR undefined.
    no_gap = {"weak_acc": 0.8, "strong_acc": 0.8}
    monkeypatch.setattr(scorer, "baselines", lambda testbed: {"validation": no_gap, "holdout": no_gap})
    ids, labels = _truth(small_home)
    with pytest.raises(ScoreError, match="no weak-to-strong gap"):
        scorer.submit("erin", "tax-small", ids, labels)
    assert scorer.remaining("erin") == FAST.queries_per_analyst
    audit = pd.read_json(small_home / "sealed" / "audit.jsonl", lines=True)
    assert audit.iloc[-1]["submitter"] == "erin" and "no weak-to-strong gap" in audit.iloc[-1]["outcome"]


def test_the_ladder_step_is_one_standard_error_of_the_split_and_the_bound_counts_transcripts():
    # taxonomy-like: 1,057 rows, teacher 0.696, ceiling 0.945: one SE of PGR is 0.047
    assert ladder_step(1057, 0.696, 0.945, 1.0, 0.02, 0.01) == 0.05
    assert ladder_step(100_000, 0.696, 0.945, 1.0, 0.02, 0.01) == 0.02  # never finer than the minimum
    assert ladder_levels(0.0, 1.22, 0.05) == 24
    # Q answers, M releasable values: C(Q + M, M) transcripts
    assert math.isclose(transcript_bits(3, 2), math.log2(10))
    assert transcript_bits(1000, 24) < 170 < 1000 * math.log2(25)
    # bits -> labels beyond a guess that is wrong on 30% of 1,000 rows: nothing for nothing, all
    # 300 errors for enough bits, and fewer labels than bits in between for a good guess
    assert labels_beyond_chance_bound(1000, 0.3, 0) == 0
    assert labels_beyond_chance_bound(1000, 0.3, 10_000) == 300
    assert 0 < labels_beyond_chance_bound(1000, 0.1, 100) < 100


def test_information_bound_describes_the_default_budget(small_home):
    scorer = Scorer(small_home, ScorerConfig(baseline_seeds=2))
    bound = scorer.information_bound("tax-small")
    base = scorer.baselines("tax-small")["validation"]
    assert bound["queries"] == ScorerConfig().queries_per_analyst and bound["rows"] == 150
    assert bound["levels"] == ladder_levels(0.0, (1 - base["weak_acc"]) / (base["strong_acc"] - base["weak_acc"]),
                                            bound["step"])
    assert bound["bits"] == round(transcript_bits(bound["queries"], bound["levels"]), 1)
