"""The campaign's budget ledger (agents/ledger.py): each researcher's share of the campaign's
caps, the campaign's spend read from where it is recorded (checkpointed budgets, the forum's
results), which cap is reached, and `aar campaign status` ending with the totals. No Ray."""

import dataclasses
import json

import pytest

from aar_ray.agents.budget import Budget
from aar_ray.agents.ledger import CampaignLedger, CampaignSpend
from aar_ray.agents.researcher import ResearcherLimits
from aar_ray.campaign import (CampaignConfig, CampaignLimits, campaign_ledger, campaign_status, campaign_totals,
                              researcher_configs)
from aar_ray.campaign.report import cost_summary
from aar_ray.cli import main
from aar_ray.forum import Forum, default_url


def write_state(researchers_dir, name, steps=1, stopped=None, **spent):
    """A researcher's checkpoint as `Researcher._save` writes it (only what readers use)."""
    budget = Budget(max_dollars=5.0, name=name)
    budget.charge(**spent)
    folder = researchers_dir / name
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"format": 2, "steps": steps, "stopped": stopped,
                                                   "agent_seconds": 1.0, "budget": budget.to_dict()}))


def record(forum, key, gpu_seconds):
    forum.record_result("r", "t", "vanilla_w2s", key, [1], 0.5, 0.7, ["run"], gpu_seconds=gpu_seconds)


@pytest.mark.parametrize("researchers, dollars, hours, own", [
    (3, 10.0, 1.0, None), (7, 0.1, 5.0, None), (4, 100.0, None, 10.0), (1, 3.0, 2.0, 5.0), (5, None, 0.3, None)])
def test_equal_shares_never_add_up_past_the_campaign_cap_and_a_smaller_own_cap_wins(researchers, dollars, hours, own):
    ledger = CampaignLedger({"dollars": dollars, "agent_hours": hours}, researchers, "unused")
    shares = ledger.shares(ResearcherLimits(max_dollars=own, max_steps=9))
    assert len(shares) == researchers and ledger.policy.name == "equal"
    assert all(s.max_steps == 9 for s in shares)  # everything else is the researcher's own limit
    for cap, limit, mine in (("dollars", "max_dollars", own), ("agent_hours", "max_agent_hours", None)):
        total = ledger.caps[cap]
        if total is None:
            assert all(getattr(s, limit) == mine for s in shares)
        else:
            assert sum(getattr(s, limit) for s in shares) <= total + 1e-9
            assert all(getattr(s, limit) == min(total / researchers, mine or float("inf")) for s in shares)


def test_researcher_configs_take_their_limits_from_the_ledger_and_each_its_own_copy():
    config = CampaignConfig(researchers=4, limits=CampaignLimits(dollars=100.0, gpu_hours=3.0),
                            researcher_limits=ResearcherLimits(max_dollars=40.0))
    configs = researcher_configs(config)
    assert [c.limits for c in configs] == campaign_ledger(config).shares(config.researcher_limits)
    assert {c.limits.max_dollars for c in configs} == {25.0} and configs[0].limits is not configs[1].limits
    assert config.researcher_limits.max_dollars == 40.0  # the config itself is left alone


def test_a_share_policy_is_the_ledgers_to_choose():
    class FirstTakesAll:
        name = "first"

        def shares(self, caps, own, researchers):
            return [dataclasses.replace(own, max_dollars=caps["dollars"] if i == 0 else 0.0)
                    for i in range(researchers)]

    ledger = CampaignLedger({"dollars": 6.0}, 3, "unused", policy=FirstTakesAll())
    assert [s.max_dollars for s in ledger.shares(ResearcherLimits())] == [6.0, 0.0, 0.0]


def test_spent_adds_up_the_checkpointed_budgets_and_the_forums_gpu_seconds(tmp_path):
    researchers = tmp_path / "campaigns" / "c" / "researchers"
    write_state(researchers, "a-0", tokens=100, dollars=1.25, experiments=2, hours=0.5)
    write_state(researchers, "b-1", tokens=50, dollars=0.75, experiments=1, hours=0.25)
    (researchers / "starting").mkdir()  # a researcher with no checkpoint yet spent nothing
    forum = Forum(default_url(tmp_path), "c")
    record(forum, "c/a-0/1/seed1", 1800.0)
    record(forum, "c/b-1/1/seed1", 5400.0)
    Forum(default_url(tmp_path), "another").record_result("r", "t", "m", "x/1", [1], 0.1, 0.1, ["r"],
                                                           gpu_seconds=99999.0)  # not this campaign's
    ledger = CampaignLedger({"dollars": 10.0, "wall_seconds": 60.0}, 2, researchers, forum)
    spent = ledger.spent()
    assert spent == CampaignSpend(tokens=150, dollars=2.0, experiments=3, agent_hours=0.75, gpu_hours=2.0)
    just_read = [dataclasses.replace(r, gpu_seconds=s) for r, s in zip(forum.results(), (36.0, None))]
    assert ledger.spent(results=just_read).gpu_hours == 0.01  # the rows passed in, not the forum's
    assert "wall_seconds" not in ledger.caps  # the driver's deadline, not spend
    assert CampaignLedger({}, 2, tmp_path / "nothing-yet").spent() == CampaignSpend()


@pytest.mark.parametrize("caps, expected", [
    ({}, None),
    ({"dollars": 2.0}, "dollars"),  # reached exactly (within float noise) counts
    ({"dollars": 2.0 + 1e-12}, "dollars"),
    ({"dollars": 2.5}, None),
    ({"agent_hours": 0.75, "gpu_hours": 1.0}, "agent_hours"),  # the first in CAPS order
    ({"dollars": 9.0, "agent_hours": 9.0, "gpu_hours": 2.0}, "gpu_hours"),
    ({"gpu_hours": 2.01}, None),
])
def test_exhausted_names_the_campaign_cap_that_is_reached(caps, expected):
    spent = CampaignSpend(tokens=10**6, dollars=2.0, experiments=50, agent_hours=0.75, gpu_hours=2.0)
    assert CampaignLedger(caps, 3, "unused").exhausted(spent) == expected


def test_the_reports_cost_table_is_the_ledgers_totals(tmp_path):
    """The report shows the figures the caps were checked against, not a second sum of them."""
    config = CampaignConfig(name="lab", home=str(tmp_path), researchers=2)
    researchers = tmp_path / "campaigns" / "lab" / "researchers"
    write_state(researchers, "a-0", tokens=1200, dollars=1.25, experiments=2, hours=0.5)
    write_state(researchers, "b-1", tokens=300, dollars=0.25, hours=0.25)
    forum = Forum(default_url(tmp_path), "lab")
    record(forum, "lab/a-0/1/seed1", 5400.0)
    spent = campaign_ledger(config, forum).spent()
    cost = cost_summary(spent, config.researchers, forum.results(), wall_seconds=1800)
    assert cost == {"researchers": 2, "tokens": 1500, "dollars": 1.5, "agent_hours": 0.75,
                    "dollars_per_agent_hour": 2.0, "experiments": 1, "wall_minutes": 30.0, "gpu_hours": 1.5}


def test_exhausted_reads_the_spend_from_disk_when_not_given_it(tmp_path):
    researchers = tmp_path / "researchers"
    write_state(researchers, "a-0", dollars=1.0)
    ledger = CampaignLedger({"dollars": 2.0}, 2, researchers)
    assert ledger.exhausted() is None
    write_state(researchers, "b-1", dollars=1.0)
    assert ledger.exhausted() == "dollars"


def test_campaign_status_keeps_its_rows_and_ends_with_the_totals_against_the_caps(tmp_path, capsys):
    home, name = tmp_path / "home", "lab"
    config = CampaignConfig(name=name, home=str(home), researchers=2,
                            limits=CampaignLimits(dollars=4.0, gpu_hours=0.5))
    researchers = home / "campaigns" / name / "researchers"
    write_state(researchers, "a-0", steps=3, tokens=10, dollars=1.0, experiments=1)
    write_state(researchers, "b-1", steps=2, stopped="finished: done", dollars=0.5)
    (home / "campaigns" / name / "config.json").write_text(json.dumps(
        {"researchers": config.researchers, "forum_url": "", "limits": vars(config.limits)}))
    record(Forum(default_url(home), name), f"{name}/a-0/1/seed1", 1800.0)

    rows = campaign_status(str(home), name)
    assert rows[1] == {"name": "b-1", "steps": 2, "stopped": "finished: done", "tokens": 0, "dollars": 0.5,
                       "experiments": 0, "hours": 0.0}
    totals = campaign_totals(str(home), name)
    assert totals == {"campaign": name, "tokens": 10, "dollars": 1.5, "experiments": 1, "agent_hours": 0.0,
                      "gpu_hours": 0.5, "caps": {"dollars": 4.0, "agent_hours": None, "gpu_hours": 0.5},
                      "exhausted": "gpu_hours"}
    assert main(["campaign", "status", "--name", name, "--home", str(home)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert printed == [*rows, totals]

    # before the driver saved its config: the spend so far, no caps, no forum opened
    (home / "campaigns" / name / "config.json").unlink()
    bare = campaign_totals(str(home), name)
    assert bare["caps"] == {"dollars": None, "agent_hours": None, "gpu_hours": None}
    assert (bare["dollars"], bare["gpu_hours"], bare["exhausted"]) == (1.5, 0.0, None)
    with pytest.raises(FileNotFoundError, match="no campaign 'nope'"):
        campaign_totals(str(home), "nope")
