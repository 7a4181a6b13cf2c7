"""Budgets: where they are enforced (every model call of a researcher, every experiment, the
campaign's caps as per-researcher shares) and what a budget remembers across a restart."""

import json
import pickle

import pytest
from stub_llm_server import StubLLMServer, anthropic_message, tool_use_block

from aar_ray.agents.budget import Budget, BudgetExceeded
from aar_ray.agents.researcher import BackendConfig, Researcher, ResearcherConfig, ResearcherLimits
from aar_ray.agents.tools import ToolContext, call_tool
from aar_ray.campaign import CampaignConfig, CampaignLimits, researcher_configs
from aar_ray.forum import Forum


def tools_context(root, budget=None, forum=None) -> ToolContext:
    return ToolContext(researcher="r", campaign="c", testbed="t", home=str(root), workspace=root / "workspace",
                       scorer=None, forum=forum, tracker=None, budget=budget or Budget())


def answer_every_tool(ctx, name, arguments, call_id):
    return json.dumps({"ok": True}), False


def claude_researcher(stub, tmp_path, **limits) -> Researcher:
    config = ResearcherConfig(name="r", direction="x", testbed="t",
                              backend=BackendConfig(kind="anthropic", model="claude-sonnet-4-6", base_url=stub.url,
                                                    max_tokens_per_turn=256),
                              limits=ResearcherLimits(max_experiments=None, **limits))
    return Researcher(config, tools_context(tmp_path), tmp_path / "state", execute=answer_every_tool)


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")


def test_a_model_call_that_could_pass_the_dollar_cap_is_refused_before_it_is_sent(tmp_path, api_key):
    with StubLLMServer() as stub:
        status = claude_researcher(stub, tmp_path, max_dollars=0.0001).run()
        assert stub.requests == []
    assert status["stopped"].startswith("budget: r: dollars budget exceeded: used 0 + requested")
    assert status["spent"]["dollars"] == 0


def test_each_model_call_is_charged_what_the_server_reports(tmp_path, api_key):
    with StubLLMServer() as stub:
        for i in range(2):
            stub.push(anthropic_message([tool_use_block(f"t{i}", "leaderboard", {})], input_tokens=300,
                                        output_tokens=20, cache_read_input_tokens=1000))
        status = claude_researcher(stub, tmp_path, max_steps=2).run()
        assert len(stub.requests) == 2
    assert status["stopped"] == "max_steps 2 reached"
    assert status["spent"]["tokens"] == 2 * (300 + 20 + 1000) and status["spent"]["dollars"] > 0


def test_a_token_cap_stops_the_researcher_once_spent_and_survives_a_restart(tmp_path, api_key):
    with StubLLMServer() as stub:
        # the reply costs more than its estimate: charged in full, the next turn is not taken
        stub.push(anthropic_message([tool_use_block("t0", "leaderboard", {})], input_tokens=25_000, output_tokens=20))
        first = claude_researcher(stub, tmp_path, max_tokens=20_000).run()
        again = claude_researcher(stub, tmp_path, max_tokens=20_000)  # resumed from its checkpoint
        assert len(stub.requests) == 1
    assert first["stopped"] == "budget: tokens cap reached" and again.budget.spent.tokens == 25_020
    assert again.budget.exhausted() == "tokens"


def test_an_experiment_past_the_experiment_cap_is_refused_with_an_error_the_agent_can_read(tmp_path):
    budget = Budget(max_experiments=1)
    budget.charge(experiments=1)
    ctx = tools_context(tmp_path, budget, Forum(f"sqlite:///{tmp_path / 'forum.db'}", "c"))
    content, is_error = call_tool(ctx, "run_experiment", {"method": "vanilla_w2s", "seeds": [1]}, "call-1")
    assert is_error and "experiments budget exceeded: used 1 + requested 1 > cap 1" in content
    assert json.loads(content)["code"] == "budget_exhausted"  # what an agent acts on, whatever the wording
    assert budget.spent.experiments == 1


def test_the_search_researcher_stops_experimenting_on_the_budget_code_not_on_words():
    from aar_ray.agents.search import next_action

    def history(error: dict) -> list[dict]:
        call = {"id": "c1", "name": "run_experiment", "input": {"method": "vanilla_w2s", "seeds": [1]}}
        return [{"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": json.dumps(error), "is_error": True}]

    out = history({"error": "no more experiments for you", "code": "budget_exhausted"})
    assert next_action(["vanilla_w2s", "confident_only"], out)[0] == "finish"
    wording = history({"error": "seeds: the budget word alone means nothing", "code": "tool_error"})
    assert next_action(["vanilla_w2s", "confident_only"], wording) == (
        "run_experiment", {"method": "confident_only", "seeds": [1]})


def test_campaign_dollars_and_hours_are_shared_equally_and_a_smaller_own_cap_wins():
    config = CampaignConfig(researchers=4, limits=CampaignLimits(dollars=100.0, agent_hours=8.0),
                            researcher_limits=ResearcherLimits(max_dollars=10.0))
    limits = {(c.limits.max_dollars, c.limits.max_agent_hours) for c in researcher_configs(config)}
    assert limits == {(10.0, 2.0)}
    config.researcher_limits.max_dollars = None
    assert {c.limits.max_dollars for c in researcher_configs(config)} == {25.0}


def test_budget_check_charge_and_checkpoint():
    budget = Budget(max_tokens=100, max_experiments=2, max_agent_hours=1.5, name="r1")
    budget.check(tokens=100)
    budget.charge(tokens=60, experiments=1, hours=1.0)
    with pytest.raises(BudgetExceeded, match=r"r1: tokens budget exceeded: used 60 \+ requested 41"):
        budget.check(tokens=41)
    budget.check(tokens=40, experiments=1, hours=0.5)
    with pytest.raises(BudgetExceeded) as caught:
        budget.check(experiments=2)
    assert (caught.value.which, caught.value.used, caught.value.cap) == ("experiments", 1, 2)
    restored = Budget.from_dict(json.loads(json.dumps(budget.to_dict())))
    assert restored.spent == budget.spent and restored.caps == budget.caps
    assert pickle.loads(pickle.dumps(budget)).spent == budget.spent
    error = pickle.loads(pickle.dumps(caught.value))
    assert (error.which, error.scope, str(error)) == ("experiments", "r1", str(caught.value))
    budget.charge(tokens=50)  # charging never refuses; the overshoot exhausts the budget
    assert budget.exhausted() == "tokens" and budget.remaining()["tokens"] == 0
