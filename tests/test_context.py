"""A researcher's bounded context and append-only checkpoint: clearing, compaction, notes,
context-length errors, old checkpoints, and 1,000 steps against a stub server with a 16k window
(tool results up to 20,000 characters), killed mid-compaction and resumed."""

import json
import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from stub_llm_server import StubLLMServer, anthropic_message, openai_completion, openai_tool_call, tool_use_block

from aar_ray.agents.backends import (
    ContextLengthExceeded,
    ToolSpec,
    context_overflow,
    to_anthropic_messages,
    tool_result_message,
    user_message,
)
from aar_ray.agents.budget import Budget
from aar_ray.agents.checkpoint import Checkpoint, CheckpointError, final_notes, read_history
from aar_ray.agents.context import SUMMARY_HEADER, Context, ContextSettings, digest
from aar_ray.agents.researcher import BackendConfig, Researcher, ResearcherConfig, ResearcherLimits
from aar_ray.agents.tools import ToolContext, call_tool

TOOLS = [ToolSpec("read_file", "Read a file.", {"type": "object", "properties": {"path": {"type": "string"}},
                                                  "required": ["path"]})]
WINDOW = 16_384


# ---- helpers ------------------------------------------------------------------------------------
def turn(i: int, size: int) -> list[dict]:
    """One assistant turn calling read_file, with a result of `size` characters."""
    return [{"role": "assistant", "content": f"step {i}", "tool_calls": [
        {"id": f"c{i}", "name": "read_file", "input": {"path": f"f{i}.py"}}]},
            tool_result_message(f"c{i}", "x" * size)]


def assert_well_formed(messages: list[dict]) -> None:
    """What both APIs require: the conversation starts with the user, and every tool result
    answers a call of the assistant message just before its run of results."""
    assert messages[0]["role"] == "user"
    open_calls: set[str] = set()
    for m in messages:
        if m["role"] == "assistant":
            open_calls = {c["id"] for c in m.get("tool_calls") or []}
        elif m["role"] == "tool":
            assert m["tool_call_id"] in open_calls, m["tool_call_id"]
    turns = to_anthropic_messages(messages)
    assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2) + ["user"] * (len(turns) % 2)


def summariser(calls: list):
    def summarise(old, max_tokens):
        calls.append(len(old))
        return f"summary of {len(old)} messages", "model"
    return summarise


def tools_context(root: Path) -> ToolContext:
    return ToolContext(researcher="r", campaign="c", testbed="t", home=str(root), workspace=root / "workspace",
                       scorer=None, forum=None, tracker=None, budget=Budget())


def fast_tools(ctx, name, arguments, call_id):
    """A stand-in for the real tools (no scorer, no sandbox): update_notes is real, read_file
    answers 20,000 characters, the rest a few hundred to a few thousand, all deterministic."""
    if name == "update_notes":
        return call_tool(ctx, name, arguments, call_id)
    size = 20_000 if name == "read_file" else random.Random(call_id).randint(200, 3_000)
    return json.dumps({"content": "x" * size}), False


class ScriptedModel:
    """The stub's model: a tool call a turn (read_file, run_shell, leaderboard, and update_notes
    every 25th), a summary when asked for one (a request without tools)."""

    def __init__(self, block_summary: int | None = None):
        self.turns = 0
        self.summaries = 0
        self.block_summary = block_summary  # the summary request to hold until released
        self.blocked, self.release = threading.Event(), threading.Event()

    def __call__(self, request):
        if not request.body.get("tools"):
            self.summaries += 1
            if self.summaries == self.block_summary:
                self.blocked.set()
                self.release.wait(30)
            return openai_completion("Tried read_file on many files; f3.py looked best; next: run it. " * 15,
                                     completion_tokens=250)
        self.turns += 1
        i = self.turns
        if i % 25 == 0:
            call = openai_tool_call(f"c{i}", "update_notes", {"content": f"notes at turn {i}: best f3.py. " + "n" * 1500})
        else:
            name = ("read_file", "run_shell", "leaderboard")[i % 3]
            args = {"read_file": {"path": f"f{i}.py"}, "run_shell": {"command": "ls"}, "leaderboard": {}}[name]
            call = openai_tool_call(f"c{i}", name, args)
        return openai_completion("Next I look at this. " * 4, [call], completion_tokens=60)


def open_config(url: str, steps: int, **backend) -> ResearcherConfig:
    return ResearcherConfig(name="r", direction="reweighting", testbed="t",
                            backend=BackendConfig(kind="openai", model="open", base_url=url + "/v1",
                                                  max_tokens_per_turn=1024, **backend),
                            limits=ResearcherLimits(max_steps=steps, max_experiments=None))


# ---- the context, without a server --------------------------------------------------------------
def test_clearing_then_compaction_keep_pairs_latest_turns_and_replay_exactly(tmp_path):
    context = Context(Checkpoint(tmp_path), ContextSettings(window=8_000, max_tokens=1_000, keep_recent_turns=3))
    context.append(user_message("Begin."))
    calls = []
    for i in range(40):
        for message in turn(i, 6_000 if i % 2 else 300):
            context.append(message)
        context.fit("system", TOOLS, summariser(calls))
        assert context.tokens("system", TOOLS) <= context.settings.usable()
        assert_well_formed(context.messages)
        assert context.messages[-2]["tool_calls"][0]["id"] == f"c{i}"  # the latest turn is whole
    assert context.events["clear"] > 0 and calls  # results were cleared first, then turns compacted
    assert context.messages[0]["content"].startswith(SUMMARY_HEADER)
    # the log replays to the same context, and still holds every message in full
    replayed = Context(Checkpoint(tmp_path), ContextSettings(window=8_000))
    replayed.replay(Checkpoint(tmp_path).records())
    assert replayed.messages == context.messages
    history = list(read_history(tmp_path))
    assert len(history) == 81 and history[-1]["content"] == "x" * 6_000


def test_a_result_too_big_for_the_window_alone_is_cut_to_fit(tmp_path):
    context = Context(Checkpoint(tmp_path), ContextSettings(window=4_096, max_tokens=512))
    context.append(user_message("Begin."))
    for message in turn(0, 40_000):
        context.append(message)
    context.fit("system", TOOLS, summariser([]))
    assert context.tokens("system", TOOLS) <= context.settings.usable()
    assert "cut to fit the context window" in context.messages[-1]["content"]
    assert context.events["truncate"] >= 1


def test_the_digest_is_deterministic_and_carries_earlier_digests():
    old = [user_message("Begin.")] + [m for i in range(30) for m in turn(i, 500)]
    first = digest(old, 2_000)
    assert first == digest(old, 2_000) and len(first) <= 2_100 and "earlier entries omitted" in first
    again = digest([user_message(SUMMARY_HEADER + first)] + turn(99, 10), 4_000)
    assert "c29" in again and "c99" in again


def test_context_length_errors_are_recognised_with_their_numbers():
    vllm = context_overflow(400, "This model's maximum context length is 4096 tokens. However, your prompt "
                                 "contains at least 4097 input tokens, for a total of at least 5121 tokens.")
    assert isinstance(vllm, ContextLengthExceeded) and (vllm.window, vllm.prompt_tokens) == (4096, 4097)
    claude = context_overflow(400, "prompt is too long: 208656 tokens > 200000 maximum")
    assert (claude.window, claude.prompt_tokens) == (200000, 208656)
    older = context_overflow(400, "This model's maximum context length is 8192 tokens. However, you requested "
                                  "9000 tokens (8000 in the messages, 1000 in the completion).")
    assert (older.window, older.prompt_tokens) == (8192, 8000)
    assert context_overflow(400, "messages: bad shape") is None
    assert context_overflow(500, "maximum context length is 4096") is None


# ---- checkpoints --------------------------------------------------------------------------------
def test_an_old_checkpoint_resumes_and_a_foreign_one_fails_clearly(tmp_path):
    old = [user_message("Begin."), *turn(0, 100), *turn(1, 100)[:1]]  # the last call has no result yet
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "state.json").write_text(json.dumps({
        "config": {}, "messages": old, "steps": 2, "agent_seconds": 1.5, "stopped": None,
        "budget": Budget().to_dict()}))
    ran = []

    def execute(ctx, name, arguments, call_id):
        ran.append(call_id)
        return "{}", False

    config = ResearcherConfig(name="r", direction="d", testbed="t", limits=ResearcherLimits(max_steps=3))
    researcher = Researcher(config, tools_context(tmp_path), tmp_path / "old", execute=execute)
    assert researcher.messages == old and researcher.steps == 2
    researcher.step()  # finishes the pending call, and only that one
    assert ran == ["c1"] and researcher.stopped.startswith("max_steps")
    state = json.loads((tmp_path / "old" / "state.json").read_text())
    assert state["format"] == 2 and state["steps"] == 3 and state["messages"] == []
    assert [m.get("tool_call_id") for m in read_history(tmp_path / "old")][-1] == "c1"

    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "state.json").write_text(json.dumps({"format": 7}))
    with pytest.raises(CheckpointError, match=r"format 7.*move .* away"):
        Researcher(config, tools_context(tmp_path), tmp_path / "odd")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        Researcher(config, tools_context(tmp_path), tmp_path / "bad")


def test_a_half_written_last_record_is_cut_off_on_resume(tmp_path):
    checkpoint = Checkpoint(tmp_path)
    checkpoint.append("message", message=user_message("Begin."))
    checkpoint.append("message", message=user_message("second"))
    checkpoint.close()
    with open(tmp_path / "log.jsonl", "ab") as f:
        f.write(b'{"seq": 2, "kind": "message", "mess')  # the crash
    assert [r["seq"] for r in Checkpoint(tmp_path).records()] == [0, 1]  # a reader skips it
    reopened = Checkpoint(tmp_path)
    assert [r["seq"] for r in reopened.records(repair=True)] == [0, 1]
    assert reopened.append("message", message=user_message("third")) == 2
    assert [r["message"]["content"] for r in Checkpoint(tmp_path).records()] == ["Begin.", "second", "third"]


# ---- researchers against the stub ---------------------------------------------------------------
def test_notes_are_in_every_request_and_the_final_notes_are_readable(tmp_path):
    with StubLLMServer(model="open", context_window=WINDOW, count_usage=True, responder=ScriptedModel()) as stub:
        researcher = Researcher(open_config(stub.url, 30), tools_context(tmp_path), tmp_path, execute=fast_tools)
        researcher.run()
        systems = [r.body["messages"][0]["content"] for r in stub.requests if r.body and r.body.get("tools")]
    assert "(none yet" in systems[0] and "notes at turn 25" in systems[-1]
    assert final_notes(tmp_path).startswith("notes at turn 25")
    records = [r for r in Checkpoint(tmp_path).records() if r["kind"] == "notes"]
    assert len(records) == 1 and records[0]["text"] == final_notes(tmp_path)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_context_length_error_compacts_and_retries_once_instead_of_failing(tmp_path, kind, monkeypatch):
    """The config says a 100k window, the server has 8k: its 400 makes the researcher learn the
    window, compact and retry; the researcher goes on, no request after the first is refused."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    model = ScriptedModel()

    def responder(request):
        if kind == "openai":
            return model(request)
        if not request.body.get("tools"):
            return anthropic_message([{"type": "text", "text": "summary: read files f1..f9"}], output_tokens=50)
        model.turns += 1
        return anthropic_message([tool_use_block(f"t{model.turns}", "read_file", {"path": "a.py"})])

    with StubLLMServer(model="open" if kind == "openai" else None, context_window=8_192, count_usage=True,
                       responder=responder) as stub:
        config = open_config(stub.url, 12, context_window=100_000)
        if kind == "anthropic":
            config.backend.kind, config.backend.model, config.backend.base_url = "anthropic", "claude-sonnet-4-6", stub.url
        researcher = Researcher(config, tools_context(tmp_path), tmp_path, execute=fast_tools)
        status = researcher.run()
        refused = [i for i, r in enumerate(stub.requests) if r.prompt_tokens + r.body["max_tokens"] > 8_192]
    assert status["stopped"].startswith("max_steps"), status
    assert len(refused) == 1 and researcher.context.settings.window == 8_192
    assert researcher.context.events["compact"] >= 1


# ---- 1,000 steps, a 16k window, killed mid-compaction ---------------------------------------------
STEPS = 1_000


def _run_until_killed(url: str, state_dir: str) -> None:  # in a forked child
    config = open_config(url, STEPS)
    researcher = Researcher(config, tools_context(Path(state_dir)), state_dir, execute=fast_tools)
    researcher.run()
    os._exit(0)


@pytest.mark.slow
def test_a_thousand_steps_in_a_16k_window_stay_bounded_and_resume_after_a_kill_mid_compaction(tmp_path):
    model = ScriptedModel(block_summary=3)
    with StubLLMServer(model="open", context_window=WINDOW, count_usage=True, responder=model) as stub:
        # a researcher in a child process, killed while it waits for its third summary
        child = multiprocessing.get_context("fork").Process(target=_run_until_killed, args=(stub.url, str(tmp_path)))
        child.start()
        assert model.blocked.wait(120), "no third compaction"
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        model.release.set()
        killed_at = json.loads((tmp_path / "state.json").read_text())["steps"]
        kinds = [r["kind"] for r in Checkpoint(tmp_path).records()]
        assert kinds.count("compact") == 2  # the third never reached the log

        # resumed in this process, it carries on to step 1,000
        started = time.time()
        researcher = Researcher(open_config(stub.url, STEPS), tools_context(tmp_path), tmp_path, execute=fast_tools)
        assert researcher.steps == killed_at
        per_step_bytes = []
        while researcher.stopped is None:
            before = researcher.checkpoint.bytes_written
            researcher.step()
            per_step_bytes.append(researcher.checkpoint.bytes_written - before)
        elapsed = time.time() - started
        turns = [r for r in stub.requests if r.body and r.body.get("tools")]
        summaries = [r for r in stub.requests if r.body and not r.body.get("tools")]

    assert researcher.stopped == f"max_steps {STEPS} reached" and researcher.steps == STEPS
    # every request under the window; none refused
    assert all(r.prompt_tokens + r.body["max_tokens"] <= WINDOW for r in turns + summaries)
    # tokens sent per step: flat after the first compaction
    sent = [r.prompt_tokens for r in turns]
    early, late = sent[100:300], sent[-200:]
    assert max(sent) <= WINDOW and abs(sum(late) / len(late) - sum(early) / len(early)) < 0.15 * sum(early) / len(early)
    # checkpoint bytes written per step: flat (no rewrite of the conversation)
    early_b, late_b = per_step_bytes[:300], per_step_bytes[-300:]
    assert sum(late_b) / len(late_b) < 1.3 * sum(early_b) / len(early_b)
    assert max(per_step_bytes) < 60_000
    # the resume rebuilds the same context, and every call was run exactly once
    again = Researcher(open_config(stub.url, STEPS), tools_context(tmp_path), tmp_path, execute=fast_tools)
    assert again.messages == researcher.messages and again.steps == STEPS
    history = list(read_history(tmp_path))
    calls = [c["id"] for m in history if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    results = [m["tool_call_id"] for m in history if m["role"] == "tool"]
    assert sorted(calls) == sorted(results) and len(set(results)) == len(results) >= STEPS
    assert researcher.context.events["compact"] >= 10 and researcher.context.events["clear"] >= 10
    assert "notes at turn" in researcher._system_prompt()
    print(f"resumed at step {killed_at}, {STEPS - killed_at} steps in {elapsed:.1f} s; tokens per turn "
          f"{sum(early) // len(early)} early, {sum(late) // len(late)} late; checkpoint bytes per step "
          f"{sum(early_b) // len(early_b)} early, {sum(late_b) // len(late_b)} late; {len(summaries)} summaries")


@pytest.mark.slow
def test_the_context_growth_benchmark_prints_one_json_line():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "context_growth.py"
    out = subprocess.run([sys.executable, str(script), "--steps", "12"], capture_output=True, text=True,
                         timeout=300, check=True).stdout.strip().splitlines()
    result = json.loads(out[-1])
    assert result["tokens_sent_per_step"]["compacted"]["10"] == result["tokens_sent_per_step"]["uncompacted"]["10"]
    assert result["paper_preset"]["dollars_per_agent_hour"]["compacted_cached"] > 0
