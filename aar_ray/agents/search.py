"""The offline search researcher: no LLM, the same tools, successive halving over library methods.

It is the embedded default and the baseline LLM researchers must beat on the same budget. Each
step reads the conversation so far (its own tool calls and their results), so it keeps no state
of its own and resumes from a checkpoint exactly like an LLM researcher does.

Plan: every candidate on seed 1; the better half on seeds 2-3; the better half of those on
seeds 4-5; then a forum post with the ranking, then finish. It ranks by the scorer's feedback, as
an LLM researcher must: a seed that beat the campaign's best counts with its released PGR, one
that did not counts below every one that did. Candidates come from the researcher's
direction (a list of method specs), so different researchers explore different regions first.
"""

from __future__ import annotations

import json

from aar_ray.agents.backends import ToolCall, ToolSpec, Turn, Usage
from aar_ray.agents.tools import BUDGET_EXHAUSTED

ROUNDS = ([1], [2, 3], [4, 5])

DEFAULT_CANDIDATES = [
    "vanilla_w2s", "vanilla_w2s:loss=soft", "confident_only", "confident_only:low=0.4,high=0.6",
    "aux_confidence", "aux_confidence:alpha=0.5", "aux_confidence:warmup=0.5", "self_training",
    "self_training:rounds=1", "zero_shot_prior",
]


def seed_value(feedback: dict | None) -> float | None:
    """What one seed's feedback says of its PGR: the released value when it beat the campaign's
    best; otherwise only that it did not, so it ranks below every seed that did."""
    if not feedback or feedback.get("pgr") is None:
        return None
    return feedback["pgr"] if feedback.get("improved") else feedback["pgr"] - 1.0


def _experiment_history(messages: list[dict]):
    """What the feedback says of every method's seeds so far, the (method, seeds) pairs already
    tried (failed ones included, so nothing is retried forever), and whether the budget ran out."""
    calls = {c["id"]: c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", [])}
    scores: dict[str, dict[int, float]] = {}
    tried: set[tuple[str, tuple[int, ...]]] = set()
    out_of_budget = False
    for m in messages:
        if m["role"] != "tool" or calls.get(m["tool_call_id"], {}).get("name") != "run_experiment":
            continue
        call, result = calls[m["tool_call_id"]]["input"], json.loads(m["content"])
        tried.add((call["method"], tuple(call["seeds"])))
        if m.get("is_error"):
            out_of_budget |= result.get("code") == BUDGET_EXHAUSTED
            continue
        per_seed = {int(s): seed_value(f) for s, f in result.get("feedback_per_seed", {}).items()
                     if seed_value(f) is not None}
        scores.setdefault(call["method"], {}).update(per_seed)
    return scores, tried, out_of_budget


def _mean(per_seed: dict[int, float]) -> float:
    return sum(per_seed.values()) / len(per_seed) if per_seed else float("-inf")


def next_action(candidates: list[str], messages: list[dict]) -> tuple[str, dict]:
    """The next tool call (name, arguments) of successive halving, given the history."""
    scores, tried, out_of_budget = _experiment_history(messages)
    survivors = list(candidates)
    if not out_of_budget:
        for seeds in ROUNDS:
            for method in survivors:
                if (method, tuple(seeds)) not in tried:
                    return "run_experiment", {"method": method, "seeds": seeds}
            survivors = sorted(survivors, key=lambda m: -_mean(scores.get(m, {})))[:max(1, len(survivors) // 2)]
    posted = any(c["name"] == "post" for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", []))
    ranking = sorted((m for m in scores if scores[m]), key=lambda m: -_mean(scores[m]))
    if not posted and ranking:
        body = "\n".join(f"{m}: feedback score {_mean(scores[m]):.2f} over seeds {sorted(scores[m])} "
                         "(a seed that did not beat the best counts as best - 1)" for m in ranking)
        return "post", {"title": f"Search results: best {ranking[0]}", "body": body}
    best = ranking[0] if ranking else "nothing scored"
    return "finish", {"summary": f"successive halving over {len(candidates)} methods; best: {best}"}


class SearchBackend:
    """A Backend whose turns are decided by `next_action`; it costs no tokens."""

    def __init__(self, candidates: list[str] | None = None):
        self.candidates = list(candidates or DEFAULT_CANDIDATES)

    def estimate_cost(self, system, messages, tools, max_tokens) -> tuple[int, float]:
        return 0, 0.0

    def step(self, system: str, messages: list[dict], tools: list[ToolSpec], max_tokens: int) -> Turn:
        name, arguments = next_action(self.candidates, messages)
        call_id = f"search-{sum(len(m.get('tool_calls', [])) for m in messages if m['role'] == 'assistant')}"
        return Turn(text="", tool_calls=[ToolCall(call_id, name, arguments)], stop_reason="tool_use",
                    usage=Usage(), dollars=0.0, raw_model="search")
