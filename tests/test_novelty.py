"""Novelty of an idea against the campaign's earlier ideas, posts and shared code: a copy of
another researcher's idea is marked, a different idea scores higher, and a library method run
again is recognised by name and meaning (real MiniLM vectors)."""

import pytest

from aar_ray.agents.novelty import code_similarity, earlier_items, novelty
from aar_ray.forum import Forum

CONFIDENCE = '''
def run(ctx):
    """Weight each row by the teacher's confidence, then fit the student on the weighted labels."""
    import numpy as np
    probs = ctx.weak.probs["train_unlabel"]
    weights = np.abs(probs - 0.5) * 2  # confident rows count more
    student = ctx.new_student()
    student.fit("train_unlabel", probs, sample_weight=weights)
    return student.predict_proba("test")
'''

COPY = CONFIDENCE.replace("weights", "w").replace("confident rows count more", "trust sure rows")

PROPAGATION = '''
def run(ctx):
    """Spread labels over a nearest-neighbour graph of the student's embeddings."""
    import numpy as np
    emb = ctx.new_student().zero_shot_scores("test")
    order = np.argsort(emb)
    smoothed = np.convolve(emb[order], np.ones(5) / 5, mode="same")
    out = np.empty_like(smoothed)
    out[order] = smoothed
    return 1 / (1 + np.exp(-out))
'''


@pytest.fixture()
def forum(tmp_path):
    forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "c")
    code_id = forum.share_code("reweighting-1", "confidence", CONFIDENCE)
    forum.record_result("reweighting-1", "taxonomy", "confidence", "c/reweighting-1/1", [1], 0.4, 0.8, [],
                        code_ref=code_id, kind="idea")
    forum.record_result("labels-2", "taxonomy", "vanilla_w2s:loss=soft", "c/labels-2/1", [1], 0.1, 0.7, [])
    forum.post("labels-2", "Soft labels help", "Training on the teacher's probabilities beat hard labels.")
    return forum


def test_a_copy_of_another_researchers_idea_is_marked_and_a_new_idea_is_not(forum):
    earlier = earlier_items(forum, "taxonomy")
    assert {(e.kind, e.title) for e in earlier} == {("idea", "idea:confidence"), ("idea", "vanilla_w2s:loss=soft"),
                                                     ("post", "Soft labels help")}
    copied = novelty("representations-0", "sure_rows", COPY, earlier)
    assert copied["near_duplicate_of"] == "idea:confidence (reweighting-1)"
    assert copied["nearest"][0]["title"] == "idea:confidence" and copied["novelty"] < 0.1
    new = novelty("representations-0", "graph_smoothing", PROPAGATION, earlier)
    assert new["near_duplicate_of"] is None and new["novelty"] > copied["novelty"] + 0.2


def test_a_researchers_own_earlier_idea_is_nearest_but_not_a_duplicate_of_another(forum):
    again = novelty("reweighting-1", "confidence", CONFIDENCE, earlier_items(forum, "taxonomy"))
    assert again["novelty"] == 0.0 and again["near_duplicate_of"] is None
    assert again["nearest"][0] == {"kind": "idea", "id": 1, "author": "reweighting-1", "title": "idea:confidence",
                                   "similarity": 1.0}


def test_a_library_method_is_compared_by_its_name_and_summary(forum):
    same = novelty("reweighting-1", "vanilla_w2s:loss=soft", None, earlier_items(forum, "taxonomy"))
    assert same["near_duplicate_of"] == "vanilla_w2s:loss=soft (labels-2)"


def test_the_first_idea_of_a_campaign_is_wholly_new(tmp_path):
    empty = Forum(f"sqlite:///{tmp_path / 'empty.db'}", "c")
    assert novelty("r", "x", CONFIDENCE, earlier_items(empty)) == {"novelty": 1.0, "nearest": [],
                                                                       "near_duplicate_of": None}


def test_code_similarity_sees_copies_through_renames_less_than_through_paste():
    assert code_similarity(CONFIDENCE, CONFIDENCE) == 1.0
    assert 0.5 < code_similarity(CONFIDENCE, COPY) < 1.0
    assert code_similarity(CONFIDENCE, PROPAGATION) < 0.2
    assert code_similarity("", CONFIDENCE) == 0.0


def test_a_researchers_tool_records_novelty_on_the_runs_and_marks_a_duplicate_on_the_forum(forum, tmp_path):
    from aar_ray.agents.budget import Budget
    from aar_ray.agents.tools import ToolContext, idea_novelty
    from aar_ray.experiments import ExperimentSpec
    from aar_ray.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "c", spool_dir=tmp_path / "spool")
    run_id = tracker.log_experiment("x", {"method": "idea:sure_rows"}, {"pgr": 0.4}, {"aar_kind": "experiment"})
    ctx = ToolContext(researcher="representations-0", campaign="c", testbed="taxonomy", home=str(tmp_path),
                      workspace=tmp_path / "ws", scorer=None, forum=forum, tracker=tracker, budget=Budget())
    found = idea_novelty(ctx, ExperimentSpec("taxonomy", "sure_rows", 0, str(tmp_path), code=COPY), [run_id])
    run = tracker.client.get_run(run_id).data
    assert run.metrics["novelty"] == found["novelty"] < 0.1
    assert run.tags["near_duplicate_of"] == "idea:confidence (reweighting-1)"
    assert run.tags["nearest_earlier"] == "idea idea:confidence (reweighting-1)"
    [mark] = [p for p in forum.read_posts() if p["author"] == "novelty-check"]
    assert mark["title"] == "Near-duplicate: idea:sure_rows (representations-0)"
    # the mark is not itself an earlier idea for the next one
    assert all(e.author != "novelty-check" for e in earlier_items(forum))
