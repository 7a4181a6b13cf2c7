"""Gaming the score without reading anything sealed: label-free shortcuts (flagged), reading
labels through the answers (single-row flips and group tests: they work on the record, which is
why researchers only see the Ladder's feedback), and climbing a leaderboard on noise (the
Ladder). The scorer is used in-process here: the same class the actor wraps.
"""

import sys
import uuid
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest

from aar_ray.experiments import ExperimentSpec, run_method
from aar_ray.forum import Forum
from aar_ray.models.artifacts import binary_labels, weak_labels
from aar_ray.scoring import Scorer
from aar_ray.scoring.ladder import ladder_release
from aar_ray.scoring.scorer import ScorerConfig
from aar_ray.testbeds import eval_ids, load_sealed

from .helpers import SCORER, STUDENT, TESTBED

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import label_recovery  # noqa: E402


@pytest.fixture(scope="module")
def scorer(small_home):
    return Scorer(small_home, SCORER)


@pytest.fixture(scope="module")
def ids(small_home):
    return eval_ids(TESTBED, small_home, "validation")


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
    result = scorer.submit(_name("prior"), TESTBED, *_shuffled(*prior.half("validation"), 2))
    assert result["flags"] == ["matches_shortcut:zero_shot_prior"]
    assert result["pgr"] > 1  # past the ceiling without the teacher: the study's "skip the teacher" hack


def test_a_weak_to_strong_method_is_not_flagged(scorer, small_home):
    vanilla = run_method(ExperimentSpec(TESTBED, "vanilla_w2s", 1, str(small_home), {"loss": "hard"}, STUDENT))
    submitter = _name("honest")
    answer = scorer.submit(submitter, TESTBED, *vanilla.half("validation"))
    assert "flags" not in answer and answer["feedback"]["flags"] == []
    assert "flags" not in _last_audit(scorer, submitter)


# --- reading labels through the answers ------------------------------------------------------

def test_single_row_flips_read_labels_through_the_record_but_not_through_the_feedback(scorer, small_home, ids):
    """Why researchers see only `feedback`: on this 150-row split one row moves accuracy by
    0.0067 and PGR by about 0.03, both past the record's 0.01 rounding, so every flip shows in
    the record (at ~1,000 rows an attacker first steers to a rounding boundary, and then it
    does too). The feedback repeats the Ladder's best whatever the flip did."""
    submitter = _name("reader")
    base = np.random.default_rng(7).random(len(ids))
    first = scorer.submit(submitter, TESTBED, ids, base)
    rows = list(range(12))
    read, feedback = {}, []
    for row in rows:
        answer = scorer.submit(submitter, TESTBED, ids, _flip(base, [row]))
        assert answer["pgr"] != first["pgr"]  # visible in the record
        read[ids[row]] = (1 - base[row] > 0.5) if answer["pgr"] > first["pgr"] else (base[row] > 0.5)
        feedback.append({k: v for k, v in answer["feedback"].items() if k != "queries_left"})
    truth = load_sealed(TESTBED, small_home, "validation").set_index("id")["label"]
    assert read == {i: bool(binary_labels([truth[i]])[0]) for i in read}  # every label read exactly
    assert all(f == {**feedback[0], "improved": False} for f in feedback)  # the feedback: nothing


def test_group_testing_reads_every_label_through_the_old_answers_and_none_through_the_ladder(small_home):
    """benchmarks/label_recovery.py's attack, small: group tests steered by known-label padding,
    decoded exactly. Against the old answers (the record's PGR on every answer, a budget per
    submitter) it reads every label, with no query a near-copy of another; against the feedback
    with the default step and budget, what it gets right beyond its label-free guess stays
    within the information bound, and here at chance. The control, a Ladder whose step is one
    row, leaks most labels again: it is the step, not a weak attack, that holds."""
    report = label_recovery.run(TESTBED, small_home, head_start_rows=20, seed=3, old_budget=200,
                                new_config=ScorerConfig(baseline_seeds=SCORER.baseline_seeds))
    rows = report["rows"] - report["head_start"]
    old, ladder, fine = report["old"], report["ladder"], report["ladder_one_row_step"]
    assert old["labels_determined"] == old["determined_correct"] == old["right"] == rows  # all of them
    assert old["queries"] < 150 and old["near_copies"] == 0
    for figures in (ladder, fine):
        assert figures["determined_correct"] == figures["labels_determined"]  # decoded exactly, as well
        assert figures["beyond_chance"] <= figures["labels_beyond_chance_bound"]
        assert figures["improvements"] <= figures["levels"]
    assert ladder["beyond_chance"] <= 0.05 * rows
    assert fine["beyond_chance"] >= 0.8 * (rows - fine["chance"])


# --- climbing the leaderboard on noise --------------------------------------------------------

def test_ladder_releases_a_new_best_only_past_the_noise():
    assert ladder_release(None, 0.503, 0.05) == 0.5  # the first result, on the noise grid
    assert ladder_release(0.5, 0.54, 0.05) == 0.5  # a gain within the noise: nothing new shown
    assert ladder_release(0.5, 0.55, 0.05) == 0.5  # exactly the noise is not more than it
    assert ladder_release(0.5, 0.58, 0.05) == 0.6
    assert ladder_release(0.5, 0.20, 0.05) == 0.5  # a worse result never lowers the best
    with pytest.raises(ValueError):
        ladder_release(0.5, 0.6, 0)


def test_the_leaderboard_researchers_read_shows_only_what_the_ladder_released(tmp_path):
    """The forum keeps each result's record (for the operator) and what its researcher was shown;
    the researchers' leaderboard tool lists only results that raised the campaign's Ladder, with
    the released value, so reading it tells nothing the feedback had not already told."""
    from aar_ray.agents.tools import leaderboard

    forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "ladder")
    # Resubmitted variants whose records differ by noise, then a real gain.
    for call, (record, shown) in enumerate([(0.40, 0.4), (0.43, None), (0.41, None), (0.44, None),
                                            (0.42, None), (0.61, 0.6), (0.63, None)]):
        forum.record_result("climber", TESTBED, f"idea-{call}", f"ladder/{call}", [1], record, 0.7, [],
                            shown_pgr=shown)

    board = leaderboard(SimpleNamespace(testbed=TESTBED, forum=forum))["leaderboard"]  # the fields it reads
    assert [(row["idea"], row["pgr"]) for row in board] == [("idea-5", 0.6), ("idea-0", 0.4)]
    # The plain (operator's) leaderboard puts the luckiest resubmission first.
    assert forum.leaderboard(TESTBED)[0].name == "idea-6"


# --- afterwards -------------------------------------------------------------------------------

def test_the_scorer_still_answers_honest_submitters_after_the_attacks(scorer, small_home):
    truth = load_sealed(TESTBED, small_home, "validation")
    result = scorer.submit(_name("after"), TESTBED, truth["id"].tolist(), binary_labels(truth["label"]))
    assert result["transfer_acc"] == 1.0 and "flags" not in result
    assert result["feedback"]["queries_left"] == SCORER.queries_per_analyst - 1
