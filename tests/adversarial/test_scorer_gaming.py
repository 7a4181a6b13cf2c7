"""Gaming the score without reading anything sealed: label-free shortcuts (flagged), probing the
scorer for labels one row at a time (flagged, then throttled), and climbing a leaderboard on
noise (the Ladder). The scorer is used in-process here: the same class the actor wraps.
"""

import uuid

import numpy as np
import pytest

from aar_ray.experiments import ExperimentSpec, run_method
from aar_ray.forum import Forum
from aar_ray.models.artifacts import binary_labels, weak_labels
from aar_ray.scoring import Scorer
from aar_ray.scoring.checks import PROBING_FLAG, ladder_leaderboard, ladder_release
from aar_ray.scoring.scorer import ScorerConfig, Throttled
from aar_ray.testbeds import load_public, load_sealed

from .helpers import SCORER, STUDENT, TESTBED


@pytest.fixture(scope="module")
def scorer(small_home):
    return Scorer(small_home, SCORER)


@pytest.fixture(scope="module")
def ids(small_home):
    return load_public(TESTBED, small_home)["validation"]["id"].tolist()


def _name(label: str) -> str:
    return f"gamer-{label}-{uuid.uuid4().hex[:6]}"


def _flip(probs: np.ndarray, rows) -> np.ndarray:
    flipped = probs.copy()
    flipped[list(rows)] = 1 - flipped[list(rows)]
    return flipped


def _shuffled(ids, probs, seed):
    """The same predictions with the rows in another order: the scorer accepts any order, so its
    checks must not depend on it."""
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order], probs[order]


def _last_audit(scorer, submitter) -> dict:
    return [e for e in scorer.audit_log() if e["submitter"] == submitter][-1]


# --- shortcuts: scored, flagged ---------------------------------------------------------------

def test_all_true_and_near_copies_of_it_are_flagged_but_still_scored(scorer, ids):
    all_true = np.ones(len(ids))
    result = scorer.submit(_name("all-true"), TESTBED, ids, all_true)
    assert "matches_shortcut:all_true" in result["flags"] and "pgr" in result
    submitter = _name("jitter")
    jittered = scorer.submit(submitter, TESTBED, ids, _flip(all_true, [3, 70]))  # 2 of 150 rows off
    assert "matches_shortcut:all_true" in jittered["flags"]
    assert "matches_shortcut:all_true" in _last_audit(scorer, submitter)["flags"]
    # Ten rows off (93% agreement) is past the 98% line: the check is a threshold, not a hash.
    assert "flags" not in scorer.submit(_name("far"), TESTBED, ids, _flip(all_true, range(0, 150, 15)))


def test_the_teachers_majority_answer_is_flagged(scorer, small_home, ids):
    teacher = weak_labels(TESTBED, small_home, scorer.teacher, 1).probs["train_unlabel"]
    majority = float((teacher > 0.5).mean() >= 0.5)
    result = scorer.submit(_name("majority"), TESTBED, *_shuffled(ids, np.full(len(ids), majority), 1))
    assert "matches_shortcut:teacher_majority" in result["flags"]


def test_the_students_zero_shot_prior_is_flagged_despite_its_score(scorer, small_home):
    # The library's own zero_shot_prior, on a seed the scorer's shortcuts were not built from.
    prior = run_method(ExperimentSpec(TESTBED, "zero_shot_prior", 3, str(small_home), {"temperature": 20.0},
                                      STUDENT))
    result = scorer.submit(_name("prior"), TESTBED, *_shuffled(prior.ids, prior.probs, 2))
    assert result["flags"] == ["matches_shortcut:zero_shot_prior"]
    assert result["pgr"] > 1  # past the ceiling without the teacher: the study's "skip the teacher" hack


def test_a_weak_to_strong_method_is_not_flagged(scorer, small_home):
    vanilla = run_method(ExperimentSpec(TESTBED, "vanilla_w2s", 1, str(small_home), {"loss": "hard"}, STUDENT))
    submitter = _name("honest")
    assert "flags" not in scorer.submit(submitter, TESTBED, vanilla.ids, vanilla.probs)
    assert "flags" not in _last_audit(scorer, submitter)


# --- probing: flagged, then throttled ---------------------------------------------------------

def test_probing_is_flagged_then_throttled_without_using_budget(scorer, ids):
    submitter = _name("prober")
    base = np.random.default_rng(12345).random(len(ids))
    assert "flags" not in scorer.submit(submitter, TESTBED, ids, base)
    probe = base
    for row in range(SCORER.probes_allowed):  # each one row away from the one before, rows shuffled
        probe = _flip(probe, [row])
        result = scorer.submit(submitter, TESTBED, *_shuffled(ids, probe, row))
        assert result["flags"] == [PROBING_FLAG]
    left = scorer.remaining(submitter)
    with pytest.raises(Throttled, match="near-copies are refused"):
        scorer.submit(submitter, TESTBED, ids, _flip(probe, [99]))
    assert scorer.remaining(submitter) == left
    refused = _last_audit(scorer, submitter)
    assert refused["outcome"].startswith("rejected") and refused["flags"] == [PROBING_FLAG]
    # What is not a probe still goes through: the same answer again, and a substantively new one.
    assert "flags" not in scorer.submit(submitter, TESTBED, ids, probe)
    assert "flags" not in scorer.submit(submitter, TESTBED, ids, _flip(probe, range(0, 150, 4)))


def test_without_the_throttle_single_row_flips_read_labels_through_the_rounded_score(scorer, small_home, ids):
    """Why probes are capped: on this 150-row split one row moves accuracy by 0.0067 and PGR by
    about 0.03 (a 0.22 gap), both past the 0.01 rounding, so every flip shows. (At the embedded
    testbeds' ~1,000 validation rows one row is ~0.004 PGR: most flips hide, but an attacker who
    first steers to a rounding boundary sees each one.)"""
    unthrottled = Scorer(small_home, ScorerConfig(baseline_seeds=2, probes_allowed=10**6))
    submitter = _name("reader")
    base = np.random.default_rng(7).random(len(ids))
    start = unthrottled.submit(submitter, TESTBED, ids, base)["pgr"]
    rows = list(range(12))
    read = {}
    for row in rows:
        answer = unthrottled.submit(submitter, TESTBED, ids, _flip(base, [row]))
        assert answer["pgr"] != start and answer["flags"] == [PROBING_FLAG]  # visible, and flagged
        read[ids[row]] = (1 - base[row] > 0.5) if answer["pgr"] > start else (base[row] > 0.5)
    truth = load_sealed(TESTBED, small_home, "validation").set_index("id")["label"]
    assert read == {i: bool(binary_labels([truth[i]])[0]) for i in read}  # every label read exactly
    # The throttled scorer gives an attacker SCORER.probes_allowed such reads, then refuses.


def test_a_restart_forgets_earlier_answers_but_not_the_probe_count(scorer, small_home, ids):
    submitter = _name("restarted")
    base = np.random.default_rng(99).random(len(ids))
    scorer.submit(submitter, TESTBED, ids, base)
    for row in range(SCORER.probes_allowed):
        scorer.submit(submitter, TESTBED, ids, _flip(base, [row]))
    restarted = Scorer(small_home, SCORER)
    # The bitsets are in memory only, so the first answer after a restart has nothing to be
    # compared with; the count is rebuilt from the audit log, so the next near-copy is refused.
    assert "flags" not in restarted.submit(submitter, TESTBED, ids, base)
    with pytest.raises(Throttled):
        restarted.submit(submitter, TESTBED, ids, _flip(base, [140]))


# --- climbing the leaderboard on noise --------------------------------------------------------

def test_ladder_releases_a_new_best_only_past_the_noise():
    assert ladder_release(None, 0.503, 0.05) == 0.5  # the first result, on the noise grid
    assert ladder_release(0.5, 0.54, 0.05) == 0.5  # a gain within the noise: nothing new shown
    assert ladder_release(0.5, 0.55, 0.05) == 0.5  # exactly the noise is not more than it
    assert ladder_release(0.5, 0.58, 0.05) == 0.6
    assert ladder_release(0.5, 0.20, 0.05) == 0.5  # a worse result never lowers the best
    with pytest.raises(ValueError):
        ladder_release(0.5, 0.6, 0)


def test_a_ladder_leaderboard_ignores_resubmitted_noise(tmp_path):
    forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "ladder")
    # One researcher resubmits variants whose scores differ by noise, then finds a real gain.
    for call, score in enumerate([0.40, 0.43, 0.41, 0.44, 0.42, 0.61, 0.63]):
        forum.record_result("climber", TESTBED, f"idea-{call}", f"ladder/{call}", [1], score, 0.7, [])
    board = ladder_leaderboard(forum.results(), noise=0.05)
    assert [(row["idea"], row["pgr"]) for row in board] == [("idea-5", 0.6), ("idea-0", 0.4)]
    # The plain leaderboard puts the luckiest resubmission first.
    assert forum.leaderboard(TESTBED)[0]["idea"] == "idea-6"


# --- afterwards -------------------------------------------------------------------------------

def test_the_scorer_still_answers_honest_submitters_after_the_attacks(scorer, small_home):
    truth = load_sealed(TESTBED, small_home, "validation")
    result = scorer.submit(_name("after"), TESTBED, truth["id"].tolist(), binary_labels(truth["label"]))
    assert result["transfer_acc"] == 1.0 and "flags" not in result
    assert result["submissions_left"] == SCORER.submissions_per_submitter - 1
