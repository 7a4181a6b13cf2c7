"""Routing steps between models by best-PGR gain per dollar, over real HTTP backends talking to
two local OpenAI-compatible stand-ins priced differently."""

from aar_ray.agents.backends import OpenAICompatibleBackend, Prices, user_message
from aar_ray.agents.routing import RoutedBackend, UCBRouter
from stub_llm_server import StubLLMServer, openai_completion


def test_every_model_is_tried_then_the_best_value_per_dollar_is_preferred():
    router = UCBRouter(["cheap", "dear"], exploration=0.5)
    assert [router.choose() for _ in range(1)] == [0]
    router.record_step(0, dollars=0.01, tokens=100)
    assert router.choose() == 1  # untried first
    router.record_step(1, dollars=1.0, tokens=100)
    router.credit(0, 0.10)  # 10 PGR points per dollar
    router.credit(1, 0.10)  # 0.1 per dollar
    picks = []
    for _ in range(40):
        arm = router.choose()
        router.record_step(arm, dollars=0.01 if arm == 0 else 1.0, tokens=100)
        router.credit(arm, 0.002)
        picks.append(arm)
    assert picks.count(0) > 30 and 1 in picks  # mostly the better value, still explored now and then
    router.credit(0, -0.5)  # a fall in the best is no negative credit: only gains count
    assert router.records[0].gain > 0


def test_a_routed_researcher_spends_where_the_gains_come_from():
    best = {"pgr": 0.0}

    def reply(request):
        return openai_completion("thinking", prompt_tokens=1000, completion_tokens=100, model=request.body["model"])

    with StubLLMServer(responder=reply) as small, StubLLMServer(responder=reply) as large:
        backends = {
            "small": OpenAICompatibleBackend("small", small.url + "/v1", prices=Prices(0.1, 0.4, 0, 0), context_window=8000),
            "large": OpenAICompatibleBackend("large", large.url + "/v1", prices=Prices(3.0, 15.0, 0, 0), context_window=32000)}
        routed = RoutedBackend(backends, best_pgr=lambda: best["pgr"], exploration=0.3)
        assert routed.context_window() == 8000  # a request must fit every model
        for step in range(30):
            turn = routed.step("system", [user_message(f"step {step}")], [], 256)
            if turn.raw_model == "small":
                best["pgr"] += 0.01  # the small model's steps are the ones that pay off
        tokens, dollars = routed.estimate_cost("system", [user_message("x")], [], 256)
    summary = {row["model"]: row for row in routed.by_model()}
    assert summary["small"]["steps"] > summary["large"]["steps"] >= 1
    assert summary["small"]["pgr_gain"] > 0 and summary["large"]["pgr_gain"] == 0
    assert summary["large"]["dollars"] > 0 and len(small.requests) + len(large.requests) == 30
    assert dollars == backends["large"].estimate_cost("system", [user_message("x")], [], 256)[1]


def test_a_researcher_with_routes_spreads_its_steps_and_reports_spend_per_model(tmp_path):
    from aar_ray.agents.budget import Budget
    from aar_ray.agents.researcher import BackendConfig, Researcher, ResearcherConfig, ResearcherLimits
    from aar_ray.agents.tools import ToolContext
    from aar_ray.forum import Forum

    def reply(request):
        return openai_completion("Reading the leaderboard first.", model=request.body["model"])

    with StubLLMServer(model="small", responder=reply) as small, StubLLMServer(model="large", responder=reply) as large:
        config = ResearcherConfig(
            name="r", direction="x", testbed="t", limits=ResearcherLimits(max_steps=4, max_experiments=None),
            backend=BackendConfig(kind="openai", model="small", base_url=small.url + "/v1", context_window=16_000),
            routes=[BackendConfig(kind="openai", model="small", base_url=small.url + "/v1"),
                    BackendConfig(kind="openai", model="large", base_url=large.url + "/v1")])
        forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "c")
        tools = ToolContext(researcher="r", campaign="c", testbed="t", home=str(tmp_path),
                            workspace=tmp_path / "workspace", scorer=None, forum=forum, tracker=None, budget=Budget())
        status = Researcher(config, tools, tmp_path / "state").run()
    assert status["stopped"] == "max_steps 4 reached"
    models = {row["model"]: row["steps"] for row in status["models"]}
    assert models == {"openai:small": models["openai:small"], "openai:large": models["openai:large"]}
    assert min(models.values()) >= 1 and sum(models.values()) == 4 == len(small.requests) + len(large.requests)


def test_a_route_that_is_not_an_llm_is_refused_naming_it():
    import pytest

    from aar_ray.agents.researcher import BackendConfig, ResearcherConfig, make_backend

    config = ResearcherConfig(name="r", direction="x", testbed="t", routes=[BackendConfig(kind="search")])
    with pytest.raises(ValueError, match=r"routes\[0\].kind='search'; allowed: anthropic, openai"):
        make_backend(config)
