"""The campaign report: a Markdown file a person can read without the MLflow UI, plus plots,
all also logged as artifacts of the campaign's MLflow run.

Sections: PGR over time (best so far, overall and per researcher), the winners (unflagged ideas,
best first, identical predictions collapsed into one entry) and, apart, the flagged ideas; the
generalisation table and its rule; cost (tokens, dollars, agent-hours, $/agent-hour, experiment
task hours), the lineage of each winning idea (the posts and shared code its researcher read
before running it), and each researcher's final notes.

The report is written twice: `report.md`, and `report.html` with its plots embedded, which MLflow's
artifact viewer shows as a page (it shows Markdown as text, and a Markdown image as a literal
line). The campaign's MLflow run and each researcher's get the summary metrics.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aar_ray.agents.checkpoint import final_notes, read_history  # noqa: E402
from aar_ray.agents.ledger import CampaignSpend  # noqa: E402
from aar_ray.campaign.generalisation import (DOES_NOT_GENERALISE, GENERALISATION_RULE, RankedIdea,  # noqa: E402
                                             ranked_ideas)
from aar_ray.campaign.paths import CampaignPaths  # noqa: E402
from aar_ray.forum import Result  # noqa: E402

UI_URL = "http://127.0.0.1:5000"  # where `aar ui` serves MLflow


def plot_pgr_over_time(results: list[Result], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    if results:
        start = min(r.time for r in results)
        for who in sorted({r.researcher for r in results}) + ["all researchers"]:
            rows = [r for r in results if who in ("all researchers", r.researcher)]
            minutes = [(r.time - start) / 60 for r in rows]
            best, so_far = [], float("-inf")
            for r in rows:
                so_far = max(so_far, r.pgr)
                best.append(so_far)
            style = {"linewidth": 2.5, "color": "black"} if who == "all researchers" else {"alpha": 0.7}
            ax.step(minutes, best, where="post", label=who, **style)
    ax.set_xlabel("minutes since the first result")
    ax.set_ylabel("best validation PGR so far")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def lineage(paths: CampaignPaths, result: dict) -> dict:
    """What the researcher read (shared code ids, forum posts) before the experiment that
    produced `result` (a row of the report's tables), taken from its checkpointed conversation."""
    state_dir = paths.researcher(result["researcher"])
    if not state_dir.exists():
        return {"code_read": [], "posts_read": []}
    call_id = result["call_key"].rsplit("/", 1)[-1]
    code_read, posts_read = [], []
    for message in read_history(state_dir):  # in full, also what compaction later summarised
        for call in message.get("tool_calls", []) if message["role"] == "assistant" else []:
            if call["id"] == call_id:
                return {"code_read": code_read, "posts_read": posts_read}
            if call["name"] == "read_shared_code":
                code_read.append(call["input"].get("code_id"))
        if message["role"] == "tool" and '"posts"' in message["content"]:
            posts_read += [p["id"] for p in json.loads(message["content"]).get("posts", [])]
    return {"code_read": code_read, "posts_read": sorted(set(posts_read))}


def _markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return lines


def cost_summary(spent: CampaignSpend, researchers: int, results: list[Result], wall_seconds: float) -> dict:
    """The report's cost table: the ledger's totals (the same figures its caps are checked
    against), per agent-hour, and the experiments the forum holds."""
    return {"researchers": researchers, "tokens": spent.tokens,
            "dollars": round(spent.dollars, 4), "agent_hours": round(spent.agent_hours, 4),
            "dollars_per_agent_hour": round(spent.dollars / spent.agent_hours, 2) if spent.agent_hours else 0.0,
            "experiments": len(results), "wall_minutes": round(wall_seconds / 60, 2),
            "gpu_hours": round(spent.gpu_hours, 4)}


def model_summary(config, statuses: list[dict], results: list[Result]) -> list[dict]:
    """Spend and outcomes per model: each researcher's own model (its experiments and best PGR),
    or, when steps were routed, each model's share (steps, dollars, tokens, PGR gain credited)."""
    from aar_ray.campaign import researcher_configs

    model_of = {rc.name: f"{rc.backend.kind}:{rc.backend.model}" if rc.backend.model else rc.backend.kind
                for rc in researcher_configs(config)}
    rows: dict[str, dict] = {}
    for status in statuses:
        if "name" not in status:
            continue
        spent, mine = status.get("spent", {}), [r for r in results if r.researcher == status["name"]]
        shares = status.get("models") or [{"model": model_of.get(status["name"], "?"), "steps": status["steps"],
                                           "dollars": spent.get("dollars", 0.0), "tokens": spent.get("tokens", 0)}]
        for share in shares:
            row = rows.setdefault(share["model"], {"model": share["model"], "researchers": 0, "steps": 0,
                                                   "dollars": 0.0, "tokens": 0, "experiments": 0, "best_pgr": None})
            row["steps"] += share["steps"]
            row["dollars"] = round(row["dollars"] + share["dollars"], 4)
            row["tokens"] += share["tokens"]
            if "pgr_gain" in share:
                row["pgr_gain"] = round(row.get("pgr_gain", 0.0) + share["pgr_gain"], 4)
        if not status.get("models"):  # a researcher's experiments belong to its one model
            row = rows[shares[0]["model"]]
            row["researchers"] += 1
            row["experiments"] += len(mine)
            best = max((r.pgr for r in mine if r.pgr is not None), default=None)
            if best is not None and (row["best_pgr"] is None or best > row["best_pgr"]):
                row["best_pgr"] = round(best, 4)
    return list(rows.values())


def audit_section(paths: CampaignPaths) -> list[str]:
    """The audit's verdicts (campaign/audit.py), when the campaign ran it."""
    audit_file = paths.audit_json
    if not audit_file.exists():
        return []
    records = json.loads(audit_file.read_text())
    lines = ["", "## Audit of the top ideas (see the README's audit table)", ""]
    lines += _markdown_table(records, ["idea", "researcher", "uses_teacher", "reproduces", "seed_stable",
                                       "stays_in_ctx", "review", "verdict"]) if records else ["No idea was audited."]
    for r in records:
        if r.get("outside_ctx"):
            lines.append(f"- `{r['idea']}` reaches past ctx: {r['outside_ctx']}")
        if r.get("review_reasons"):
            lines.append(f"- reviewer on `{r['idea']}` ({r['review']}): {r['review_reasons']}")
    return lines


def flag_ideas_that_do_not_generalise(ranked: list[RankedIdea], table: list[dict]) -> list[dict]:
    """The ranked ideas as the report's table rows (`Result.display`), with `does_not_generalise`
    joined to the flags of those the generalisation check flagged (the check's verdict is the
    operator's: it stays off the forum, which researchers read)."""
    failing = {row["idea"] for row in table if row.get("flagged")}
    checked = {row["idea"] for row in table}
    out = []
    for entry in ranked:
        label = entry.result.label
        flags = list(entry.flags) + ([DOES_NOT_GENERALISE] if label in failing else [])
        out.append({**entry.result.display(), "flags": ",".join(flags), "same_as": ", ".join(entry.same_as),
                    # an unflagged idea below the top-k was never re-run: say so beside it
                    "generalisation": "passed" if label in checked - failing else
                    "failed" if label in failing else "not checked"})
    return out


def with_novelty(tracker, entries: list[dict]) -> list[dict]:
    """Each entry with the novelty recorded on its first MLflow run (see agents/novelty.py):
    `novelty` (1 - similarity to the nearest earlier idea, post or shared code) and
    `near_duplicate_of` (another researcher's earlier idea it nearly repeats)."""
    out = []
    for entry in entries:
        run_ids = [r for r in entry["run_ids"] if not r.startswith("pending:")]
        metrics, tags = {}, {}
        if run_ids:
            run = tracker.client.get_run(run_ids[0])
            metrics, tags = run.data.metrics, run.data.tags
        out.append({**entry, "novelty": metrics.get("novelty", ""), "near_duplicate_of": tags.get("near_duplicate_of", "")})
    return out


def winners_of(ranked: list[dict]) -> list[dict]:
    """The unflagged ideas, those the generalisation check re-ran and passed first (verified),
    then the rest, each group best first."""
    return sorted((e for e in ranked if not e["flags"]), key=lambda e: e["generalisation"] != "passed")


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def campaign_summary(config, winners: list[dict], results: list[Result], table: list[dict], cost: dict) -> dict:
    """The campaign run's metrics: best (the winner's) and mean validation PGR, the winner's
    holdout PGR on every testbed of the check, and cost."""
    scored = _finite(r.pgr for r in results if r.testbed == config.testbed)
    summary = {"experiments": cost["experiments"], "dollars": cost["dollars"], "tokens": cost["tokens"],
               "agent_hours": cost["agent_hours"], "gpu_hours": cost["gpu_hours"], "winners": len(winners)}
    if scored:
        summary.update(mean_validation_pgr=sum(scored) / len(scored), best_validation_pgr_any=max(scored))
    if winners:
        summary["best_validation_pgr"] = winners[0]["pgr"]
        row = next((r for r in table if r["idea"] == winners[0]["idea"]), None)
        for testbed in [config.testbed, *config.heldout_testbeds] if row else []:
            name = "winner_holdout_pgr" if testbed == config.testbed else f"winner_{testbed}_pgr"
            summary[name] = row[f"{testbed}_holdout_pgr"]
    return summary


def researcher_summary(name: str, results: list[Result], status: dict, failing: set[str]) -> dict:
    """A researcher run's metrics: its best unflagged validation PGR (`best_validation_pgr_any`
    counts flagged results too), mean validation PGR, experiments, steps and spend."""
    mine = [r for r in results if r.researcher == name]
    scored = _finite(r.pgr for r in mine)
    unflagged = _finite(r.pgr for r in mine if not r.flags and r.label not in failing)
    spent = status.get("spent", {})
    summary = {"experiments": len(mine), "steps": status.get("steps", 0),
               "dollars": spent.get("dollars", 0.0), "tokens": spent.get("tokens", 0)}
    if scored:
        summary.update(best_validation_pgr_any=max(scored), mean_validation_pgr=sum(scored) / len(scored))
    if unflagged:
        summary["best_validation_pgr"] = max(unflagged)
    return summary


def finish_runs(tracker, parent_run_id: str, artifacts: list[Path], summary: dict,
                statuses: list[dict], results: list[Result], table: list[dict]) -> None:
    """Summaries on each researcher's run and the campaign's, then both end."""
    by_name = {s.get("name"): s for s in statuses}
    failing = {row["idea"] for row in table if row.get("flagged")}
    for name, run_id in tracker.researcher_runs(parent_run_id).items():
        tracker.finish_parent(run_id, summary=researcher_summary(name, results, by_name.get(name, {}), failing))
    tracker.finish_parent(parent_run_id, artifacts, summary=summary)


def write_report(config, forum, tracker, parent_run_id: str, statuses: list[dict], table: list[dict],
                 wall_seconds: float, spent: CampaignSpend) -> Path:
    """The report folder (markdown, HTML, plots, JSON tables), also logged on the campaign's run.
    `spent`: the campaign ledger's totals."""
    paths = CampaignPaths.of(config)
    out = paths.report_dir
    out.mkdir(parents=True, exist_ok=True)
    results = forum.results()
    ranked = flag_ideas_that_do_not_generalise(ranked_ideas(forum, config.testbed, config.home), table)
    winners = with_novelty(tracker, winners_of(ranked)[:10])
    flagged = with_novelty(tracker, [e for e in ranked if e["flags"]][:10])
    cost = cost_summary(spent, len(statuses), results, wall_seconds)
    plot = plot_pgr_over_time(results, paths.pgr_plot)
    paths.generalisation_json.write_text(json.dumps(table, indent=2))
    paths.cost_json.write_text(json.dumps(cost, indent=2))
    lines = [f"# Campaign `{config.name}`", "",
             f"Research testbed `{config.testbed}`; held-out testbeds: {', '.join(config.heldout_testbeds) or 'none'}; "
             f"{cost['researchers']} researchers. In the MLflow UI (`aar ui`): "
             f"{tracker.results_url(UI_URL)}", "",
             "## PGR over time", "", f"![PGR over time]({paths.pgr_plot.name})", "",
             "## Winners: unflagged ideas (validation PGR, mean over the seeds of each experiment)", "",
             "Those the generalisation check passed first, then unflagged ideas it did not re-run. "
             "One entry per distinct answer: ideas whose predictions are identical to a better one's "
             "are listed in its `same_as`. `novelty`: 1 minus the similarity (meaning or code) to the "
             "nearest idea, post or shared code of the campaign before it.", ""]
    columns = ["researcher", "idea", "pgr", "transfer_acc", "seeds", "generalisation", "novelty",
               "near_duplicate_of", "same_as"]
    lines += _markdown_table(winners, columns) if winners else ["No idea passed every check."]
    lines += ["", "## Flagged ideas (not candidates for winner; see the README's flag table)", ""]
    lines += _markdown_table(flagged, columns[:-1] + ["flags", "same_as"]) if flagged else ["None."]
    columns = ["idea", "researcher", "validation_pgr"] + [
        c for t in [config.testbed, *config.heldout_testbeds] for c in (f"{t}_holdout_pgr", f"{t}_ci95")]
    columns += ["fails_on", "flagged"]
    if config.generalisation.teacher_ablation:
        columns += ["shuffled_teacher_pgr", "ignores_teacher"]
    lines += ["", "## Generalisation (holdout PGR, mean and 95% CI half-width over seeds, re-run from code)", "",
              f"The top {config.generalisation.top_k} unflagged ideas. "
              + GENERALISATION_RULE.format(drop=config.generalisation.flag_drop), ""]
    lines += _markdown_table(table, columns)
    lines += audit_section(paths)
    lines += ["", "## Cost", ""] + _markdown_table([cost], list(cost))
    models = model_summary(config, statuses, results)
    paths.models_json.write_text(json.dumps(models, indent=2))
    lines += ["", "## Models (spend and outcomes per model)", ""] + _markdown_table(
        models, list(dict.fromkeys(k for m in models for k in m)))
    lines += ["", "## Lineage of the winners", ""]
    for row in winners[:3]:
        trace = lineage(paths, row)
        lines.append(f"- `{row['idea']}` by {row['researcher']} (PGR {row['pgr']}): read shared code "
                     f"{trace['code_read'] or 'none'}, forum posts {trace['posts_read'] or 'none'}")
    lines += ["", "## Researchers", ""] + _markdown_table(statuses, ["name", "steps", "stopped"])
    lines += ["", "## Researchers' final notes", ""]
    for status in statuses:
        if "name" not in status:  # a researcher whose actor failed: its status is only why
            lines += ["### (a researcher that failed)", "", str(status.get("stopped")), ""]
            continue
        notes = final_notes(paths.researcher(status["name"])).strip()
        lines += [f"### {status['name']}", "", notes or "(no notes kept)", ""]
    report = paths.report
    report.write_text("\n".join(lines) + "\n")
    page = paths.report_html
    page.write_text(markdown_page(lines, out, title=f"Campaign {config.name}"))
    summary = campaign_summary(config, winners, results, table, cost)
    audit = [paths.audit_json] if paths.audit_json.exists() else []
    finish_runs(tracker, parent_run_id, [report, page, plot, paths.generalisation_json, paths.cost_json,
                                         paths.models_json, *audit],
                summary, statuses, results, table)
    return report


# --- the HTML page ------------------------------------------------------------------------------
# Enough Markdown for what this report writes: headings, tables, lists, images, `code`, paragraphs.

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"(https?://[^\s<]+)", r'<a href="\1">\1</a>', escaped)


def _image(alt: str, source: str, folder: Path) -> str:
    """An image embedded as base64: the page shows it wherever it is opened from."""
    path = folder / source
    if not path.is_file():
        return f"<p>[{html.escape(alt)}: {html.escape(source)} missing]</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows
             if not re.fullmatch(r"\|(-+\|)+", row.strip())]
    head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_page(lines: list[str], folder: Path, title: str) -> str:
    parts, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            parts.append(_table(lines[i:j]))
            i = j
            continue
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        image = _IMAGE.match(line.strip())
        if heading:
            level = len(heading.group(1))
            parts.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            parts.append(_image(image.group(1), image.group(2), folder))
        elif line.startswith("- "):
            parts.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
             "font-size:13px}th{background:#f3f3f3}code{background:#f3f3f3;padding:0 2px}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
