"""The campaign report's choices a reader relies on: winners are unflagged ideas, ideas that
answer alike are one entry, the generalisation flag covers every held-out testbed, the HTML page
carries its plots; and progress in a log reads as lines, not redraws."""

import base64
import io
import json

import pytest

from aar_ray.campaign.generalisation import fails_on, ranked_ideas, top_ideas
from aar_ray.campaign.report import (flag_ideas_that_do_not_generalise, markdown_page, researcher_summary,
                                     winners_of)
from aar_ray.forum import Forum
from aar_ray.progress import progress


def _result(forum, audit, researcher, idea, pgr, answers: dict[int, str], flags=""):
    """A researcher's experiment as the forum and the scorer's audit log hold it."""
    key = f"c/{researcher}/{idea}-{pgr}"
    forum.record_result(researcher, "taxonomy", idea, key, list(answers), pgr, 0.8, [], flags=flags)
    for seed, digest in answers.items():
        audit.append({"outcome": "scored", "key": f"{key}/seed{seed}", "hard_predictions_sha256": digest})


@pytest.fixture()
def campaign(tmp_path):
    forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "c")
    audit: list[dict] = []
    _result(forum, audit, "representations-0", "zero_shot_prior", 0.86, {1: "prior"},
            flags="matches_shortcut:zero_shot_prior")
    _result(forum, audit, "reweighting-1", "zero_shot_prior:temperature=1", 0.86, {1: "prior"},
            flags="matches_shortcut:zero_shot_prior")
    _result(forum, audit, "reweighting-1", "aux_confidence:alpha=0.5", 0.82, {1: "aux1", 2: "aux2"})
    _result(forum, audit, "labels-2", "aux_confidence:alpha=0.50", 0.81, {2: "aux2", 3: "aux3"})  # same answers
    _result(forum, audit, "labels-2", "vanilla_w2s", 0.55, {1: "van1", 2: "van2"})
    _result(forum, audit, "labels-2", "vanilla_w2s", 0.50, {1: "van1b"})  # the same method again
    # the spelling seen alike on seed 1 (through zero_shot_prior), now on seeds 2 and 3 only
    _result(forum, audit, "reweighting-1", "zero_shot_prior:temperature=1", 0.85, {2: "prior", 3: "prior3"},
            flags="matches_shortcut:zero_shot_prior")
    (tmp_path / "sealed").mkdir()
    (tmp_path / "sealed" / "audit.jsonl").write_text("".join(json.dumps(e) + "\n" for e in audit))
    return forum, str(tmp_path)


def test_ideas_with_identical_predictions_are_one_entry_best_first(campaign):
    forum, home = campaign
    ranked = ranked_ideas(forum, "taxonomy", home)
    assert [(e.result.label, e.result.researcher) for e in ranked] == [
        ("zero_shot_prior", "representations-0"), ("aux_confidence:alpha=0.5", "reweighting-1"),
        ("vanilla_w2s", "labels-2")]
    assert ranked[0].same_as == ["zero_shot_prior:temperature=1 (reweighting-1)"]  # two results, named once
    assert ranked[1].same_as == ["aux_confidence:alpha=0.50 (labels-2)"]
    assert ranked[2].same_as == [] and len(ranked[2].members) == 2  # its own run again: collapsed, not listed
    assert ranked[0].flags == ("matches_shortcut:zero_shot_prior",) and ranked[1].flags == ()


def test_the_candidates_for_winner_are_unflagged(campaign):
    forum, home = campaign
    assert [e.result.label for e in top_ideas(forum, "taxonomy", 3, home)] == ["aux_confidence:alpha=0.5", "vanilla_w2s"]


def test_an_idea_that_fails_on_any_held_out_testbed_is_flagged_and_shown_apart(campaign):
    forum, home = campaign
    row = {"taxonomy_holdout_pgr": 0.79, "sentiment_holdout_pgr": 0.23, "preference_holdout_pgr": float("nan")}
    assert fails_on(row, ["taxonomy", "sentiment", "preference"], 0.82, 0.15) == ["sentiment", "preference"]
    assert fails_on(row, ["taxonomy"], 0.82, 0.15) == []
    table = [{"idea": "aux_confidence:alpha=0.5", "flagged": True}, {"idea": "vanilla_w2s", "flagged": False}]
    ranked = flag_ideas_that_do_not_generalise(ranked_ideas(forum, "taxonomy", home), table)
    assert {e["idea"]: (e["flags"], e["generalisation"]) for e in ranked} == {
        "zero_shot_prior": ("matches_shortcut:zero_shot_prior", "not checked"),
        "aux_confidence:alpha=0.5": ("does_not_generalise", "failed"), "vanilla_w2s": ("", "passed")}
    assert [e["idea"] for e in winners_of(ranked)] == ["vanilla_w2s"]
    # the verdict is the operator's: researchers read the forum, which does not carry it
    assert all("does_not_generalise" not in r.flags for r in forum.results())


def test_the_html_report_embeds_its_plot_and_renders_tables(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    (tmp_path / "plot.png").write_bytes(png)
    page = markdown_page(["# Campaign `x`", "", "![PGR over time](plot.png)", "",
                          "| idea | pgr |", "|---|---|", "| `aux` | 0.82 |", "- a <winner>"], tmp_path, "x")
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert "<td><code>aux</code></td><td>0.82</td>" in page and "<h1>Campaign <code>x</code></h1>" in page
    assert "a &lt;winner&gt;" in page and "![" not in page and "|---|" not in page


def test_progress_in_a_log_is_a_line_per_finished_item_not_per_refresh():
    log = io.StringIO()
    bar = progress(total=3, desc="experiments", unit="exp", stream=log, every=3600)
    for _ in range(10):  # the campaign's loop refreshes every few seconds
        bar.update(0)
        bar.set_postfix_str("best PGR 0.50")
    bar.update(1)
    bar.update(2)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0].startswith("experiments: 1/3 exp (best PGR 0.50)") and lines[1].startswith("experiments: 3/3")


def test_progress_of_many_small_items_is_a_line_every_so_often_and_one_at_the_end():
    log = io.StringIO()
    for _ in progress(range(500), desc="embedding", unit="batch", stream=log, every=3600, per_item=False):
        pass
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedding: 500/500 batch")


def test_verified_winners_come_first_and_a_researchers_best_leaves_flagged_results_out(campaign):
    forum, home = campaign
    ranked = [{"idea": "a", "flags": "", "generalisation": "not checked"},
              {"idea": "b", "flags": "", "generalisation": "passed"},
              {"idea": "c", "flags": "ignores_teacher", "generalisation": "passed"}]
    assert [e["idea"] for e in winners_of(ranked)] == ["b", "a"]
    summary = researcher_summary("representations-0", forum.results(), {"steps": 4}, failing=set())
    assert summary["best_validation_pgr_any"] == 0.86 and "best_validation_pgr" not in summary
    summary = researcher_summary("labels-2", forum.results(), {}, failing={"aux_confidence:alpha=0.50"})
    assert summary["best_validation_pgr"] == 0.55 and summary["experiments"] == 3


def test_a_campaigns_folder_is_laid_out_in_one_place(tmp_path):
    """The layout users see under the aar home (the README's), from CampaignPaths alone."""
    from aar_ray.campaign.lock import CampaignLock
    from aar_ray.campaign.paths import CampaignPaths

    paths = CampaignPaths(str(tmp_path / "." / "home"), "c1")
    root = (tmp_path / "home").resolve() / "campaigns" / "c1"
    assert paths.root == root and paths.campaigns == root.parent
    assert (paths.lock, paths.control, paths.config_json, paths.audit_json, paths.mlflow_run_id) == (
        root / "lock.json", root / "control.json", root / "config.json", root / "audit.json", root / "mlflow_run_id")
    assert paths.researcher("labels-2") == root / "researchers" / "labels-2"
    assert (paths.report, paths.report_html, paths.models_json) == (
        root / "report" / "report.md", root / "report" / "report.html", root / "report" / "models.json")
    assert CampaignLock(paths, "c1").path == CampaignLock(root, "c1").path == root / "lock.json"
