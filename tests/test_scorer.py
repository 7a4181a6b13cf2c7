"""The scorer: rounded scores only, budgets, bad submissions, holdout behind the operator key."""

import time

import numpy as np
import pandas as pd
import pytest

from aar_ray.models.artifacts import binary_labels
from aar_ray.scoring import BudgetExhausted, Scorer, ScoreError, ScorerConfig, read_operator_key
from aar_ray.testbeds import load_public, load_sealed

FAST = ScorerConfig(submissions_per_submitter=3, baseline_seeds=2)


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
    assert set(result) == {"transfer_acc", "weak_acc", "strong_acc", "pgr", "submissions_left"}
    assert result["transfer_acc"] == 1.0
    assert result["weak_acc"] < result["strong_acc"]
    for key in ("transfer_acc", "weak_acc", "strong_acc", "pgr"):
        assert abs(result[key] * 100 - round(result[key] * 100)) < 1e-9, key
    assert result["submissions_left"] == 2


def test_flipping_one_prediction_is_invisible_in_the_rounded_score(scorer, small_home):
    ids, labels = _truth(small_home)
    probs = labels.copy()
    probs[:40] = 1 - probs[:40]
    first = scorer.submit("bob", "tax-small", ids, probs)
    probs[40] = 1 - probs[40]  # one more wrong: the exact count moves by one
    second = scorer.submit("bob", "tax-small", ids, probs)
    assert first["transfer_acc"] == second["transfer_acc"]


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
    assert scorer.remaining("carol") == FAST.submissions_per_submitter
    assert scorer.audit_log()[-1]["outcome"].startswith("rejected")


def test_unlabelled_and_holdout_rows_cannot_be_scored_by_submitters(scorer, small_home):
    for split in ("train_unlabel", "holdout"):
        ids, labels = _truth(small_home, split)
        with pytest.raises(ScoreError, match="validation ids"):
            scorer.submit("dave", "tax-small", ids, labels)
    assert scorer.remaining("dave") == FAST.submissions_per_submitter


def test_budget_is_enforced_per_submitter_and_survives_a_restart(scorer, small_home):
    ids, labels = _truth(small_home)
    for _ in range(3):
        scorer.submit("erin", "tax-small", ids, labels)
    with pytest.raises(BudgetExhausted):
        scorer.submit("erin", "tax-small", ids, labels)
    assert scorer.submit("frank", "tax-small", ids, labels)["submissions_left"] == 2
    restarted = Scorer(small_home, FAST)
    assert restarted.remaining("erin") == 0 and restarted.remaining("frank") == 2


def test_holdout_needs_the_operator_key_and_uses_no_budget(scorer, small_home):
    ids, labels = _truth(small_home, "holdout")
    with pytest.raises(ScoreError, match="operator key"):
        scorer.score_holdout("guess", "grace", "tax-small", ids, labels)
    result = scorer.score_holdout(read_operator_key(small_home), "grace", "tax-small", ids, labels)
    assert result["transfer_acc"] == 1.0
    assert scorer.remaining("grace") == FAST.submissions_per_submitter


def test_fixed_baselines_are_computed_once_and_kept_sealed(scorer, small_home):
    first = scorer.baselines("pref-small")
    assert first == Scorer(small_home, FAST).baselines("pref-small")
    assert list((small_home / "sealed" / "pref-small").glob("baselines-*.json"))
    assert first["validation"]["weak_acc"] < first["validation"]["strong_acc"] - 0.1


def test_no_public_file_carries_a_sealed_label(small_home):
    for name in ("tax-small", "pref-small"):
        public = load_public(name, small_home)
        for split, frame in public.items():
            assert ("label" in frame.columns) == (split == "train_label"), split
    for path in (small_home / "cache").rglob("*.parquet"):
        assert "label" not in pd.read_parquet(path).columns


def test_scorer_is_one_named_actor_for_the_cluster(local_ray, small_home):
    from aar_ray.scoring import scorer_actor

    actor = scorer_actor(small_home, FAST)
    same = local_ray.get_actor("aar-scorer", namespace="aar")
    ids, labels = _truth(small_home)
    result = local_ray.get(same.submit.remote("heidi", "tax-small", ids, labels))
    assert result["transfer_acc"] == 1.0
    assert local_ray.get(actor.remaining.remote("heidi")) == FAST.submissions_per_submitter - 1


def test_a_keyed_submission_is_answered_once_and_charged_once_even_after_a_restart(scorer, small_home):
    ids, labels = _truth(small_home)
    first = scorer.submit("ivan", "tax-small", ids, labels, key="c/ivan/call1/seed1")
    again = Scorer(small_home, FAST).submit("ivan", "tax-small", ids, 1 - labels, key="c/ivan/call1/seed1")
    assert again == first and Scorer(small_home, FAST).remaining("ivan") == 2
    assert [e["outcome"] for e in scorer.audit_log()[-2:]] == ["scored", "replayed"]


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
    assert _once_restarted(local_ray, lambda: actor.remaining.remote("judy")) == FAST.submissions_per_submitter - 1


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
    assert scorer.remaining("erin") == FAST.submissions_per_submitter
    audit = pd.read_json(small_home / "sealed" / "audit.jsonl", lines=True)
    assert audit.iloc[-1]["submitter"] == "erin" and "no weak-to-strong gap" in audit.iloc[-1]["outcome"]
