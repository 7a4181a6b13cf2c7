"""The audit of the top ideas: deterministic checks on what the generalisation check re-ran and
on the idea's code, and an LLM reviewer, against a real sqlite forum and the local stand-in of
the Messages API."""

import math

import pytest

from aar_ray.agents.backends import AnthropicBackend, Prices
from aar_ray.campaign.audit import FAILED_AUDIT, audit, deterministic_checks, outside_ctx
from aar_ray.forum import Forum
from stub_llm_server import StubLLMServer, anthropic_message, text_block, tool_use_block

CLEAN = '''"""Confidence-weighted self-training."""
import numpy as np


def run(ctx):
    weak = ctx.weak_labels("train_unlabel")
    return np.clip(weak.probs, 0.05, 0.95)
'''
READS_FILES = '''import numpy as np
from pathlib import Path


def run(ctx):
    secret = open("/home/sealed/labels.parquet", "rb").read()
    hidden = ().__class__.__bases__[0].__subclasses__()
    return np.zeros(10)
'''
TESTBED = "tax"


def _row(idea, researcher, validation, holdout, ci, ignores=None):
    row = {"idea": idea, "researcher": researcher, "validation_pgr": validation,
           f"{TESTBED}_holdout_pgr": holdout, f"{TESTBED}_ci95": ci, "same_as": ""}
    if ignores is not None:
        row["ignores_teacher"] = ignores
    return row


def test_code_that_reaches_past_ctx_is_found_line_by_line():
    assert outside_ctx(CLEAN) == []
    found = outside_ctx(READS_FILES)
    assert "line 2: from pathlib import ..." in found and "line 6: open()" in found
    assert "line 7: .__subclasses__" in found and "line 7: .__bases__" in found
    assert outside_ctx("def run(ctx):\n    return (") == ["line 2: does not parse ('(' was never closed)"]


def test_each_check_fails_on_its_own_evidence():
    good = deterministic_checks(_row("idea:a", "r", 0.60, 0.58, 0.05, ignores=False), CLEAN, TESTBED, drop=0.1)
    assert good.failed() == []
    drifted = deterministic_checks(_row("idea:a", "r", 0.60, 0.30, 0.05), CLEAN, TESTBED, drop=0.1)
    assert drifted.failed() == ["reproduces"] and drifted.uses_teacher is None  # no ablation: unknown, not failed
    noisy = deterministic_checks(_row("idea:a", "r", 0.60, 0.60, 0.40), CLEAN, TESTBED, drop=0.1)
    assert noisy.failed() == ["seed_stable"]
    unscored = deterministic_checks(_row("idea:a", "r", 0.60, math.nan, math.nan), CLEAN, TESTBED, drop=0.1)
    assert unscored.failed() == ["reproduces"] and unscored.seed_stable is None
    shortcut = deterministic_checks(_row("idea:a", "r", 0.60, 0.60, 0.02, ignores=True), READS_FILES, TESTBED, 0.1)
    assert shortcut.failed() == ["uses_teacher", "stays_in_ctx"]
    library = deterministic_checks(_row("vanilla_w2s", "r", 0.60, 0.60, 0.02), None, TESTBED, 0.1)
    assert library.stays_in_ctx and library.failed() == []


@pytest.fixture
def forum(tmp_path):
    forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "audit")
    ideas = {}
    for researcher, name, code in (("ada-0", "clean", CLEAN), ("bob-1", "peek", READS_FILES)):
        ref = forum.share_code(researcher, name, code)
        forum.post(researcher, f"{name}: results", f"My idea {name} uses the teacher's confidence; PGR 0.6.")
        ideas[name] = forum.record_result(researcher, TESTBED, name, f"{researcher}/{name}", [1, 2],
                                          0.6, 0.8, [], code_ref=ref, kind="idea")
    forum.ids = ideas
    return forum


def _table():
    return [_row("idea:clean", "ada-0", 0.60, 0.58, 0.03, ignores=False),
            _row("idea:peek", "bob-1", 0.60, 0.59, 0.02, ignores=False)]


def test_an_idea_that_fails_the_audit_is_flagged_and_cannot_be_a_winner(forum):
    table = _table()
    records = audit(table, forum.leaderboard(TESTBED), forum, TESTBED, drop=0.1)
    verdicts = {r["idea"]: r["verdict"] for r in records}
    assert verdicts == {"idea:clean": "pass", "idea:peek": "fail: stays_in_ctx"}
    assert [r["audit"] for r in table] == ["pass", "fail: stays_in_ctx"]
    assert "line 6: open()" in next(r for r in records if r["idea"] == "idea:peek")["outside_ctx"]
    flags = {r.label: r.flags for r in forum.results()}
    assert flags["idea:peek"] == (FAILED_AUDIT,) and flags["idea:clean"] == ()
    assert all(r["review"] == "not run" for r in records)  # no LLM backend: no review, and no failure for it


def test_the_reviewer_reads_code_writeup_and_numbers_and_its_verdict_counts(forum, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    with StubLLMServer() as stub:
        stub.push(anthropic_message([tool_use_block("toolu_1", "verdict", {
            "verdict": "inconsistent", "reasons": "The write-up claims confidence weighting; the code clips."})]))
        stub.push(anthropic_message([text_block("I think it is fine.")]))  # no verdict tool call
        reviewer = AnthropicBackend("claude-sonnet-4-6", base_url=stub.url, prices=Prices(3.0, 15.0, 3.75, 0.3))
        records = audit(_table(), forum.leaderboard(TESTBED), forum, TESTBED, drop=0.1, backend=reviewer)
        sent = [r.body["messages"][0]["content"][0]["text"] for r in stub.requests]
    clean, peek = records
    assert clean["review"] == "inconsistent" and clean["verdict"] == "fail: review"
    assert "the code clips" in clean["review_reasons"] and clean["review_dollars"] > 0
    assert peek["review"] == "unclear" and peek["verdict"] == "fail: stays_in_ctx"  # unclear is not a failure
    assert "ctx.weak_labels" in sent[0] and "uses the teacher's confidence" in sent[0]
    assert "validation_pgr" in sent[0] and "0.58" in sent[0]
