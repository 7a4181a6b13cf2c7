"""The campaign report: a Markdown file a person can read without the MLflow UI, plus plots,
all also logged as artifacts of the campaign's MLflow run.

Sections: PGR over time (best so far, overall and per researcher), leaderboard, generalisation
table, cost (tokens, dollars, agent-hours, $/agent-hour, experiment task hours), the lineage
of each winning idea (the posts and shared code its researcher read before running it), and each
researcher's final notes.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aar_ray.agents.checkpoint import final_notes, read_history  # noqa: E402


def plot_pgr_over_time(results: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    if results:
        start = min(r["time"] for r in results)
        for who in sorted({r["researcher"] for r in results}) + ["all researchers"]:
            rows = [r for r in results if who in ("all researchers", r["researcher"])]
            minutes = [(r["time"] - start) / 60 for r in rows]
            best, so_far = [], float("-inf")
            for r in rows:
                so_far = max(so_far, r["pgr"])
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


def lineage(campaign_path: Path, result: dict) -> dict:
    """What the researcher read (shared code ids, forum posts) before the experiment that
    produced `result`, taken from its checkpointed conversation."""
    state_dir = campaign_path / "researchers" / result["researcher"]
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


def cost_summary(statuses: list[dict], results: list[dict], wall_seconds: float) -> dict:
    spent = [s.get("spent", {}) for s in statuses]
    dollars = sum(s.get("dollars", 0.0) for s in spent)
    agent_hours = sum(s.get("hours", 0.0) for s in spent)
    return {"researchers": len(statuses), "tokens": sum(s.get("tokens", 0) for s in spent),
            "dollars": round(dollars, 4), "agent_hours": round(agent_hours, 4),
            "dollars_per_agent_hour": round(dollars / agent_hours, 2) if agent_hours else 0.0,
            "experiments": len(results), "wall_minutes": round(wall_seconds / 60, 2),
            "gpu_hours": round(sum(r.get("gpu_seconds") or 0.0 for r in results) / 3600, 4)}


def write_report(config, forum, tracker, parent_run_id: str, statuses: list[dict], table: list[dict],
                 wall_seconds: float) -> Path:
    from aar_ray.campaign import campaign_dir

    path = campaign_dir(config)
    out = path / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = forum.results()
    board = forum.leaderboard(config.testbed, limit=10)
    cost = cost_summary(statuses, results, wall_seconds)
    plot = plot_pgr_over_time(results, out / "pgr_over_time.png")
    (out / "generalisation.json").write_text(json.dumps(table, indent=2))
    (out / "cost.json").write_text(json.dumps(cost, indent=2))
    lines = [f"# Campaign `{config.name}`", "",
             f"Research testbed `{config.testbed}`; held-out testbeds: {', '.join(config.heldout_testbeds) or 'none'}; "
             f"{cost['researchers']} researchers ({config.backend.kind}).", "",
             "## PGR over time", "", "![PGR over time](pgr_over_time.png)", "",
             "## Leaderboard (validation PGR, mean over the seeds of each experiment)", ""]
    lines += _markdown_table(board, ["researcher", "idea", "pgr", "transfer_acc", "seeds", "flags"])
    columns = ["idea", "researcher", "validation_pgr"] + [
        c for t in [config.testbed, *config.heldout_testbeds] for c in (f"{t}_holdout_pgr", f"{t}_ci95")] + ["flagged"]
    if config.generalisation.teacher_ablation:
        columns += ["shuffled_teacher_pgr", "ignores_teacher"]
    lines += ["", "## Generalisation (holdout PGR, mean and 95% CI half-width over seeds, re-run from code)", ""]
    lines += _markdown_table(table, columns)
    lines += ["", "## Cost", ""] + _markdown_table([cost], list(cost))
    lines += ["", "## Lineage of the winners", ""]
    for row in board[:3]:
        trace = lineage(path, row)
        lines.append(f"- `{row['idea']}` by {row['researcher']} (PGR {row['pgr']}): read shared code "
                     f"{trace['code_read'] or 'none'}, forum posts {trace['posts_read'] or 'none'}")
    lines += ["", "## Researchers", ""] + _markdown_table(statuses, ["name", "steps", "stopped"])
    lines += ["", "## Researchers' final notes", ""]
    for status in statuses:
        notes = final_notes(path / "researchers" / status["name"]).strip()
        lines += [f"### {status['name']}", "", notes or "(no notes kept)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    tracker.finish_parent(parent_run_id, [report, plot, out / "generalisation.json", out / "cost.json"])
    return report
