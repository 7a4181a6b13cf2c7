"""Context growth with and without compaction: what a researcher sends per step, and what that
costs per agent-hour for the paper preset at list prices. One JSON line.

    .venv/bin/python benchmarks/context_growth.py                   # 1,000 steps, the paper preset
    .venv/bin/python benchmarks/context_growth.py --steps 200       # quicker

One run of a real `Researcher` (its loop, its Anthropic backend through the SDK over HTTP, its
context fitting and checkpoint) against the local stub of the Messages API
(`tests/stub_llm_server.py`), with the paper preset's model (claude-opus-4-6), its 200,000-token
window and 8,192 tokens per turn. The stub counts prompt tokens at `--chars-per-token`
characters a token and answers with a tool call each turn (read_file, run_shell, leaderboard,
and update_notes every 25th; a summary when asked for one), reporting `--output-tokens` output
tokens a turn. Tools are a fast stand-in: read_file answers 20,000 characters, the others 200 to
3,000 (deterministic).

Measured in the same run, at steps 10, 100 and 1,000:
  - compacted: the prompt tokens of that step's request, as sent (the stub's count);
  - uncompacted: the prompt tokens the same step would have sent with the whole conversation
    (every message in full, from the checkpoint log), counted the same way.
Projected: dollars per agent-hour for the paper preset at the list prices of conf/prices.yaml,
at `--steps-per-hour` steps an agent-hour (an ASSUMPTION: a model turn plus its tools, about a
minute), with Anthropic's prompt caching modelled as the backend uses it (breakpoints after the
tools, the system prompt and the last message; 5-minute TTL, so every step within it): a request
that extends the previous one reads the previous prompt from the cache and writes the rest; one
whose conversation changed (a clearing or compaction) reads only the tools and system prompt
(the tools alone when the notes changed) and writes the rest; summaries are paid uncached.
Without caching, every input token is paid at the input price. The uncompacted projection is
the mean over the same steps had nothing been compacted; past step ~70 those prompts no longer
fit the window, so that column is what the issue's "input cost per step grows with the step
number" would cost if the window were unlimited.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from stub_llm_server import StubLLMServer, anthropic_message, text_block, tool_use_block  # noqa: E402

from aar_ray.agents.backends import anthropic_request, load_price_table  # noqa: E402
from aar_ray.agents.budget import Budget  # noqa: E402
from aar_ray.agents.checkpoint import read_history  # noqa: E402
from aar_ray.agents.researcher import BackendConfig, Researcher, ResearcherConfig, ResearcherLimits  # noqa: E402
from aar_ray.agents.tools import SPECS, ToolContext, call_tool  # noqa: E402

MARKS = (10, 100, 1000)


def fast_tools(ctx, name, arguments, call_id):
    if name == "update_notes":
        return call_tool(ctx, name, arguments, call_id)
    size = 20_000 if name == "read_file" else random.Random(call_id).randint(200, 3_000)
    return json.dumps({"content": "x" * size}), False


class Model:
    def __init__(self, output_tokens: int):
        self.output_tokens, self.turns, self.summaries = output_tokens, 0, []

    def __call__(self, request):
        if not request.body.get("tools"):
            self.summaries.append(request.prompt_tokens)
            return anthropic_message([text_block("Tried read_file on many files; f3.py looked best. " * 20)],
                                     output_tokens=min(self.output_tokens * 2, request.body["max_tokens"]))
        self.turns += 1
        i = self.turns
        if i % 25 == 0:
            call = tool_use_block(f"t{i}", "update_notes", {"content": f"notes at turn {i}: best f3.py. " + "n" * 1500})
        else:
            name = ("read_file", "run_shell", "leaderboard")[i % 3]
            call = tool_use_block(f"t{i}", name, {"read_file": {"path": f"f{i}.py"}, "run_shell": {"command": "ls"},
                                                  "leaderboard": {}}[name])
        return anthropic_message([text_block("Next I look at this. " * 4), call], output_tokens=self.output_tokens)


def cache_cost(requests, fixed_tokens, prices, output_tokens):
    """Dollars per step with and without prompt caching (see the module doc)."""
    cached, uncached, previous = [], [], None
    for r in requests:
        messages, system, tokens = r.body["messages"], r.body.get("system"), r.prompt_tokens
        if previous is not None and system == previous[1] and _extends(messages, previous[0]):
            read = previous[2]
        elif previous is not None and system == previous[1]:
            read = fixed_tokens["tools+system"]
        else:
            read = fixed_tokens["tools"]
        read = min(read, tokens)
        cached.append((read * prices.cache_read + (tokens - read) * prices.cache_write
                       + output_tokens * prices.output) / 1e6)
        uncached.append((tokens * prices.input + output_tokens * prices.output) / 1e6)
        previous = (messages, system, tokens)
    return cached, uncached


def _strip(obj):
    """A request part without its cache_control marks (they move as the conversation grows)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "cache_control"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _extends(messages, before) -> bool:
    """Whether the Messages-API turns `messages` start with the turns `before` (the last of which
    may have grown: tool results and notes merge into one user turn)."""
    n = len(before)
    if len(messages) < n or any(_strip(before[i]) != _strip(messages[i]) for i in range(n - 1)):
        return False
    last, now = _strip(before[-1]), _strip(messages[n - 1])
    return last["role"] == now["role"] and now["content"][:len(last["content"])] == last["content"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--preset", default=str(ROOT / "conf" / "campaign" / "paper.yaml"))
    parser.add_argument("--chars-per-token", type=float, default=3.5)
    parser.add_argument("--output-tokens", type=int, default=400, help="output tokens per turn (assumed)")
    parser.add_argument("--steps-per-hour", type=float, default=60.0, help="steps per agent-hour (assumed)")
    args = parser.parse_args()

    preset = yaml.safe_load(Path(args.preset).read_text())
    model, max_tokens = preset["backend"]["model"], preset["backend"].get("max_tokens_per_turn", 4096)
    prices = load_price_table()[model]
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-benchmark-stub-not-a-key")
    marks = [m for m in MARKS if m <= args.steps]
    started = time.time()
    stub_model = Model(args.output_tokens)
    with tempfile.TemporaryDirectory() as tmp, \
            StubLLMServer(context_window=200_000, chars_per_token=args.chars_per_token, count_usage=True,
                          responder=stub_model) as stub:
        root = Path(tmp)
        tools = ToolContext(researcher="r", campaign="c", testbed="t", home=str(root), workspace=root / "workspace",
                            scorer=None, forum=None, tracker=None, budget=Budget())
        config = ResearcherConfig(name="r", direction="reweighting", testbed="t",
                                  backend=BackendConfig(kind="anthropic", model=model, base_url=stub.url,
                                                        max_tokens_per_turn=max_tokens),
                                  limits=ResearcherLimits(max_steps=args.steps, max_experiments=None))
        researcher = Researcher(config, tools, root, execute=fast_tools)
        compacted, uncompacted, bytes_per_step = {}, {}, []
        while researcher.stopped is None:
            step = researcher.steps + 1
            if step in marks:  # what this step would send with the whole conversation
                body = anthropic_request(model, researcher._system_prompt(), list(read_history(root)), SPECS,
                                         max_tokens, strict=True)
                uncompacted[step] = stub.count_tokens(body)
                sent_before = len(stub.requests)
            before = researcher.checkpoint.bytes_written
            researcher.step()
            bytes_per_step.append(researcher.checkpoint.bytes_written - before)
            if step in marks:  # what it did send
                compacted[step] = [r.prompt_tokens for r in stub.requests[sent_before:] if r.body.get("tools")][-1]
        turns = [r for r in stub.requests if r.body and r.body.get("tools")]
        fixed = {"tools": stub.count_tokens({"tools": turns[-1].body["tools"]}),
                 "tools+system": stub.count_tokens({"tools": turns[-1].body["tools"], "system": turns[-1].body["system"]})}
        cached, uncached = cache_cost(turns, fixed, prices, args.output_tokens)
        summary_dollars = sum(t * prices.input + args.output_tokens * 2 * prices.output for t in stub_model.summaries) / 1e6
        # uncompacted: every step extends the previous one (cache reads all but the new part)
        history_tokens = _uncompacted_series(root, model, researcher._system_prompt(), max_tokens, stub, len(turns))
        un_cached = [((prev if i else 0) * prices.cache_read + (t - (prev if i else 0)) * prices.cache_write
                      + args.output_tokens * prices.output) / 1e6
                     for i, (prev, t) in enumerate(zip([0] + history_tokens, history_tokens))]
        un_uncached = [(t * prices.input + args.output_tokens * prices.output) / 1e6 for t in history_tokens]
        events = dict(researcher.context.events)
        sent = [r.prompt_tokens for r in turns]

    per_hour = lambda dollars: round((sum(dollars) / len(dollars)) * args.steps_per_hour, 2)  # noqa: E731
    first_compaction = next((i for i, r in enumerate(turns) if i and sent[i] < sent[i - 1] * 0.8), None)
    result = {
        "benchmark": "context_growth", "steps": args.steps, "model": model, "context_window": 200_000,
        "max_tokens_per_turn": max_tokens, "chars_per_token": args.chars_per_token,
        "tool_result_chars_max": 20_000,
        "tokens_sent_per_step": {
            "compacted": {str(m): compacted[m] for m in marks},
            "uncompacted": {str(m): uncompacted[m] for m in marks}},
        "max_prompt_tokens": max(sent), "first_reduction_at_step": (first_compaction or 0) + 1,
        "mean_tokens_after_first_reduction": round(sum(sent[first_compaction:]) / len(sent[first_compaction:]))
        if first_compaction else None,
        "clears": events["clear"], "compactions": events["compact"], "truncations": events["truncate"],
        "summary_requests": len(stub_model.summaries),
        "checkpoint_bytes_per_step": {"first_100": round(sum(bytes_per_step[:100]) / min(100, len(bytes_per_step))),
                                      "last_100": round(sum(bytes_per_step[-100:]) / min(100, len(bytes_per_step)))},
        "paper_preset": {
            "prices_per_mtok": {"input": prices.input, "output": prices.output, "cache_write": prices.cache_write,
                                "cache_read": prices.cache_read},
            "assumed_steps_per_agent_hour": args.steps_per_hour, "assumed_output_tokens_per_turn": args.output_tokens,
            "dollars_per_agent_hour": {
                "compacted_cached": round(per_hour(cached) + summary_dollars / len(cached) * args.steps_per_hour, 2),
                "compacted_uncached": round(per_hour(uncached) + summary_dollars / len(cached) * args.steps_per_hour, 2),
                "uncompacted_cached": per_hour(un_cached), "uncompacted_uncached": per_hour(un_uncached)},
            "budget_dollars_per_agent_hour": round(preset["limits"]["dollars"] / preset["limits"]["agent_hours"], 2)},
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(result))


def _uncompacted_series(root: Path, model: str, system: str, max_tokens: int, stub, turns: int) -> list[int]:
    """Prompt tokens of each turn had the whole conversation been sent: the fixed part plus the
    running sum of every message's tokens (counted one message at a time, the same tokenizer)."""
    fixed = stub.count_tokens(anthropic_request(model, system, [{"role": "user", "content": "Begin."}], SPECS,
                                                max_tokens, strict=True))
    series, running, history = [], fixed, list(read_history(root))
    for message in history[1:]:
        if message["role"] == "assistant":
            series.append(running)
        running += stub.count_tokens({"messages": [message]})
    return series[:turns]


if __name__ == "__main__":
    main()
