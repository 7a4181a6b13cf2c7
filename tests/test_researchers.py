"""Researchers end to end on a local Ray: the search researcher through the real tools, scorer,
forum and MLflow; resume without repeating an experiment; ideas run in the sandbox."""

import json
from pathlib import Path

import mlflow
import pytest

from aar_ray.agents.budget import Budget
from aar_ray.agents.researcher import Researcher, ResearcherConfig, ResearcherLimits
from aar_ray.agents.tools import ToolContext, call_tool
from aar_ray.forum import Forum
from aar_ray.models import StudentConfig
from aar_ray.scoring import ScorerConfig, scorer_actor
from aar_ray.tracking import Tracker

pytestmark = pytest.mark.slow

QUICK = StudentConfig()


@pytest.fixture(scope="module")
def world(local_ray, small_home, tmp_path_factory):
    from aar_ray.experiments.sweep import prepare
    from aar_ray.config import BaselineConfig

    scorer = scorer_actor(small_home, ScorerConfig(baseline_seeds=2), student=QUICK)
    config = BaselineConfig(home=str(small_home), testbeds=["tax-small"], seeds=[1, 2, 3, 4, 5], student=QUICK)
    config.scorer.baseline_seeds = 2
    prepare(config, scorer, progress=False)
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return {"scorer": scorer, "home": small_home, "uri": uri}


def _tools(world, name, campaign, tmp_path):
    return ToolContext(researcher=name, campaign=campaign, testbed="tax-small", home=str(world["home"]),
                       workspace=tmp_path / name / "workspace", scorer=world["scorer"],
                       forum=Forum(f"sqlite:///{tmp_path / 'forum.db'}", campaign),
                       tracker=Tracker(world["uri"], campaign), budget=Budget(), student=QUICK)


def _search(name, limits=ResearcherLimits(max_experiments=20)):
    return ResearcherConfig(name=name, direction="data selection", testbed="tax-small",
                            candidates=["vanilla_w2s", "zero_shot_prior", "confident_only"], limits=limits)


def test_search_researcher_halves_its_candidates_posts_and_finishes(world, tmp_path):
    tools = _tools(world, "search-0", "c1", tmp_path)
    status = Researcher(_search("search-0"), tools, tmp_path / "search-0").run()
    assert status["stopped"].startswith("finished")
    results = tools.forum.results()
    # 3 candidates on seed 1, the best one (3 // 2 = 1 survivor) on seeds 2-3, then on 4-5
    assert [r.seeds for r in results] == [(1,), (1,), (1,), (2, 3), (4, 5)]
    assert results[-1].label == "zero_shot_prior" and results[-1].kind == "method"  # the taxonomy prior is the best by far
    assert "zero_shot_prior" in tools.forum.read_posts()[0]["title"]
    mlflow.set_tracking_uri(world["uri"])
    runs = mlflow.search_runs(experiment_names=["c1"])
    assert len(runs) == 3 + 2 + 2 and set(runs["tags.submitter"]) == {"search-0"}


def test_experiment_budget_is_enforced_before_running(world, tmp_path):
    tools = _tools(world, "search-1", "c2", tmp_path)
    status = Researcher(_search("search-1", ResearcherLimits(max_experiments=2)), tools, tmp_path / "s1").run()
    assert len(tools.forum.results()) == 2
    assert status["spent"]["experiments"] == 2 and status["stopped"].startswith("finished")


def test_a_restarted_researcher_resumes_without_repeating_an_experiment(world, tmp_path):
    tools = _tools(world, "search-2", "c3", tmp_path)
    first = Researcher(_search("search-2"), tools, tmp_path / "s2")
    for _ in range(2):
        first.step()
    # simulate a crash after the turn was saved but before its experiment finished recording:
    # the checkpoint log (one record a line) ends with the call, without its result
    log = tmp_path / "s2" / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["message"]["role"] == "tool"
    log.write_text("".join(lines[:-1]))
    resumed = Researcher(_search("search-2"), _tools(world, "search-2", "c3", tmp_path), tmp_path / "s2")
    resumed.run()
    keys = [r.call_key for r in tools.forum.results()]
    assert len(keys) == len(set(keys)) == 5


def test_ideas_run_sandboxed_and_cannot_read_sealed_labels(world, tmp_path):
    tools = _tools(world, "llm-0", "c4", tmp_path)
    sealed = world["home"] / "sealed" / "tax-small" / "validation.parquet"
    call_tool(tools, "write_file", {"path": "peek.py", "content": f'''
import pathlib
def run(ctx):
    ctx.log("sealed_visible", float(pathlib.Path({str(sealed)!r}).exists()))
    import aar_ray.testbeds.lexicon as lex
    ctx.log("lexicon_names", float(len([n for n in dir(lex) if n.isupper()])))
    return ctx.new_student().fit("train_unlabel", ctx.weak_targets()).predict_proba(ctx.eval_split)
'''}, "w1")
    content, is_error = call_tool(tools, "run_experiment", {"idea_file": "peek.py", "seeds": [1]}, "e1")
    assert not is_error, content
    result = json.loads(content)
    run = mlflow.MlflowClient(world["uri"]).get_run(result["run_ids"][0])
    assert run.data.metrics["method.sealed_visible"] == 0.0
    assert run.data.metrics["method.lexicon_names"] == 0.0
    assert run.data.tags["aar_kind"] == "experiment" and run.data.params["kind"] == "idea"


def test_tool_mistakes_come_back_as_errors_the_agent_can_act_on(world, tmp_path):
    tools = _tools(world, "llm-1", "c5", tmp_path)
    cases = [("no_such_tool", {}, "unknown tool"),
             ("read_file", {"path": "../../etc/passwd"}, "outside your workspace"),
             ("run_experiment", {"seeds": [1]}, "exactly one of idea_file"),
             ("run_experiment", {"method": "majority", "seeds": [1]}, "unknown method"),
             ("sample_data", {"split": "test"}, "missing ['n']")]
    for name, args, message in cases:
        content, is_error = call_tool(tools, name, args, "x")
        assert is_error and message in json.loads(content)["error"], (name, content)
    sample = json.loads(call_tool(tools, "sample_data", {"split": "test", "n": 3}, "y")[0])
    assert "label" not in sample["columns"] and len(sample["sample"]) == 3


SECRET = "sk-ant-test-SECRET123"
IDEA = '''
def run(ctx):
    student = ctx.new_student().fit("train_unlabel", ctx.weak_targets(), loss="soft")
    return student.predict_proba(ctx.eval_split)
'''


def test_claude_researcher_works_through_the_tools_and_no_key_leaks(world, tmp_path, monkeypatch, caplog):
    """A Claude researcher against a local stand-in of the Messages API: it reads the task,
    writes and runs an idea (after an overloaded 529), posts and finishes; its dollars come from
    the usage it was billed; the API key is nowhere in MLflow, the forum, checkpoints or logs."""
    from stub_llm_server import StubLLMServer, anthropic_message, tool_use_block

    from aar_ray.agents.researcher import BackendConfig

    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    caplog.set_level("DEBUG")
    with StubLLMServer() as stub:
        stub.push(anthropic_message([tool_use_block("t1", "describe_task", {})], input_tokens=1000))
        stub.push_error(529)
        stub.push(anthropic_message([tool_use_block("t2", "write_file", {"path": "soft.py", "content": IDEA}),
                                     tool_use_block("t3", "run_experiment", {"idea_file": "soft.py", "seeds": [1]})]))
        stub.push(anthropic_message([tool_use_block("t4", "post", {"title": "soft labels", "body": "works"})]))
        stub.push(anthropic_message([tool_use_block("t5", "finish", {"summary": "done"})], output_tokens=1000))
        config = ResearcherConfig(name="claude-0", direction="distillation", testbed="tax-small",
                                  backend=BackendConfig(kind="anthropic", model="claude-opus-4-6", base_url=stub.url),
                                  limits=ResearcherLimits(max_dollars=1.0))
        tools = _tools(world, "claude-0", "c6", tmp_path)
        status = Researcher(config, tools, tmp_path / "claude-0").run()
        requests = stub.requests
    assert status["stopped"] == "finished: done"
    assert len(requests) == 5 and all(r.carries(SECRET) for r in requests)
    assert status["spent"]["dollars"] > 0 and status["spent"]["tokens"] > 2000
    assert (tools.forum.results()[0].kind, tools.forum.results()[0].name) == ("idea", "soft")
    assert tools.forum.read_posts()[0]["author"] == "claude-0"
    stores = [tmp_path / "forum.db", tmp_path / "claude-0" / "state.json", tmp_path / "claude-0" / "log.jsonl",
              *Path(world["uri"].removeprefix("sqlite:///")).parent.rglob("*")]
    for path in stores:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


def test_a_dollar_cap_stops_a_claude_researcher_before_the_call_that_would_pass_it(world, tmp_path, monkeypatch):
    from stub_llm_server import StubLLMServer

    from aar_ray.agents.researcher import BackendConfig

    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    with StubLLMServer() as stub:
        config = ResearcherConfig(name="claude-1", direction="x", testbed="tax-small",
                                  backend=BackendConfig(kind="anthropic", model="claude-opus-4-6", base_url=stub.url),
                                  limits=ResearcherLimits(max_dollars=0.0001))
        status = Researcher(config, _tools(world, "claude-1", "c7", tmp_path), tmp_path / "claude-1").run()
        assert stub.requests == []  # refused before anything was sent
    assert status["stopped"].startswith("budget") and status["spent"]["dollars"] == 0


def test_researchers_see_only_feedback_and_the_leaderboard_only_what_it_released(world, tmp_path):
    """run_experiment answers with the scorer's feedback (the campaign's Ladder), never the exact
    PGR; the leaderboard tool lists only results that raised the Ladder, at the released value."""
    tools = _tools(world, "llm-2", "c8", tmp_path)
    answers = [json.loads(call_tool(tools, "run_experiment", {"method": m, "seeds": [1, 2]}, f"e{i}")[0])
               for i, m in enumerate(["vanilla_w2s", "vanilla_w2s:loss=soft", "zero_shot_prior"])]
    for answer in answers:
        assert "mean_pgr" not in answer and "pgr_per_seed" not in answer
        assert all(set(f) >= {"pgr", "improved", "step", "queries_left"} for f in answer["feedback_per_seed"].values())
    raised = [f["pgr"] for a in answers for f in a["feedback_per_seed"].values() if f["improved"]]
    board = json.loads(call_tool(tools, "leaderboard", {}, "l")[0])["leaderboard"]
    assert raised and sorted(row["pgr"] for row in board) == sorted(
        max(f["pgr"] for f in a["feedback_per_seed"].values() if f["improved"])
        for a in answers if any(f["improved"] for f in a["feedback_per_seed"].values()))
    queries_left = [f["queries_left"] for a in answers for f in a["feedback_per_seed"].values()]
    assert queries_left == sorted(queries_left, reverse=True) and queries_left[0] - queries_left[-1] == 5
