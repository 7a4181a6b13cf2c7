"""One researcher: a Ray actor that talks to its backend and runs the tools it asks for.

The loop is deliberately plain: ask the backend for a turn, save it, run each tool call, save
each result. Saving before a tool runs is what makes resume exact: a restarted researcher finds
the calls that have no result yet and runs just those, and `run_experiment` answers an already
recorded call from the forum's results instead of running it again.

What is sent stays under the model's context window (`aar_ray.agents.context`): before each
turn old bulky tool results are cleared, then older turns are compacted into a summary written
by the same model (a deterministic digest for the search backend, or when that call fails),
keeping the system prompt with the direction, the latest turns and the researcher's notes
(``notes.md`` in its workspace, kept with the ``update_notes`` tool and shown in every turn). A
context-length error from the server compacts and retries once instead of failing the
researcher. The checkpoint is an append-only log (`aar_ray.agents.checkpoint`): one fsync'd line
per message or context event plus a small state file, so checkpoint I/O per step does not grow
with the step number.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from aar_ray.agents.backends import BackendError, ContextLengthExceeded, tool_result_message, user_message
from aar_ray.agents.budget import Budget, BudgetExceeded
from aar_ray.agents.checkpoint import NOTES_FILE, Checkpoint, final_notes, read_history  # noqa: F401
from aar_ray.agents.context import Context, ContextSettings, digest, render
from aar_ray.agents.search import SearchBackend
from aar_ray.agents.tools import NOTES_LIMIT, SPECS, ToolContext, ToolError, call_tool, read_text

logger = logging.getLogger(__name__)


@dataclass
class BackendConfig:
    kind: str = "search"  # search | anthropic | openai
    model: str = ""
    base_url: str = ""  # openai: the endpoint, e.g. http://head:8000/v1; anthropic: optional proxy
    api_key_env: str = ""  # default: ANTHROPIC_API_KEY for anthropic, none for openai
    max_tokens_per_turn: int = 4096
    # The model's context window in tokens. 0: read from the server (openai: GET /models gives
    # max_model_len; 32,768 if it does not say), else the model's standard window (Claude and
    # search: 200,000). Set it lower to cap what a turn can cost.
    context_window: int = 0
    compact_at: float = 0.75  # share of the usable window at which old tool results are cleared
    compact_to: float = 0.3  # share that a compaction of older turns into a summary aims for
    keep_recent_turns: int = 6  # latest turns a compaction keeps verbatim (at least the last)
    clear_tool_results_over: int = 2000  # characters; longer old tool results are cleared first
    summary_max_tokens: int = 2048  # the longest summary a compaction asks for
    temperature: float | None = None  # sampling; None: the server's (or the model's) default
    top_p: float | None = None
    strict_tools: bool = True  # tool schemas sent strict (constrained decoding of the arguments)
    # openai: "auto" (the model chooses text or a call) or "required" (every reply is a tool call;
    # for small models that answer in prose); pre-flight checks the mode configured here
    tool_choice: str = "auto"
    startup_timeout_s: float = 300.0  # openai: how long pre-flight waits for the server to be up


@dataclass
class ResearcherLimits:
    max_steps: int = 200
    max_tokens: int | None = None
    max_dollars: float | None = None
    max_experiments: int | None = 20
    max_agent_hours: float | None = None


@dataclass
class ResearcherConfig:
    name: str
    direction: str
    testbed: str
    backend: BackendConfig = field(default_factory=BackendConfig)
    limits: ResearcherLimits = field(default_factory=ResearcherLimits)
    candidates: list[str] = field(default_factory=list)  # search backend only: methods to try
    # Several models (anthropic or openai) to route steps between by best-PGR gain per dollar
    # (agents/routing.py); `backend` then only gives the context settings. Empty: `backend`.
    routes: list[BackendConfig] = field(default_factory=list)


SYSTEM = """You are an alignment researcher working on weak-to-strong supervision, one of several
working in parallel. Your starting direction (a place to begin, not a rule):

{direction}

Explore cheaply first, then exploit what works. Share findings on the forum and read what others
found. Call describe_task first. Call finish when you are done or your budget is spent.

Your context is limited: old tool results are cleared and older turns summarised as you go. Keep
your notes up to date with update_notes (what you tried, what worked, what to try next); they
are shown below in every turn. The forum and the leaderboard hold what everyone found."""

NOTES_BLOCK = "\n\nYour notes ({file}, {chars:,} of {limit:,} characters):\n{notes}"

SUMMARY_SYSTEM = """You keep the working memory of an alignment researcher agent whose conversation
has grown too long for its context window. Summarise the part of its conversation you are given so
that it can carry on without it: what it set out to do, what it tried (ideas, files, methods,
seeds), the results with their numbers and run, post and code ids, what worked and what failed,
open questions and its next steps. Keep facts, drop chatter. Plain text, at most {words} words."""

SUMMARY_PROMPT = "{previous}Conversation to summarise:\n\n{chunk}\n\nWrite the summary now{merge}."

SEARCH_CONTEXT_WINDOW = 200_000
MAX_OVERFLOWS = 3  # context-length errors in a row, each after a compaction, before giving up

# A tool executor: (tools, name, arguments, call id) -> (JSON result, is_error).
Execute = Callable[[ToolContext, str, dict, str], tuple]


def make_backend(config: ResearcherConfig, best_pgr: Callable[[], float] = lambda: 0.0):
    """The researcher's backend; with `routes`, a RoutedBackend over them that credits each
    model with the gains in `best_pgr()` (the researcher's best released PGR)."""
    if config.routes:
        from aar_ray.agents.routing import RoutedBackend

        for i, route in enumerate(config.routes):
            if route.kind not in ("anthropic", "openai"):
                raise ValueError(f"routes[{i}].kind={route.kind!r}; allowed: anthropic, openai")
        return RoutedBackend({f"{r.kind}:{r.model}": _single_backend(r, config.candidates) for r in config.routes},
                             best_pgr)
    return _single_backend(config.backend, config.candidates)


def _single_backend(b: BackendConfig, candidates: list[str]):
    kind = b.kind
    common = dict(context_window=b.context_window or None, strict_tools=b.strict_tools,
                  temperature=b.temperature, top_p=b.top_p)
    if kind == "search":
        return SearchBackend(candidates or None)
    if kind == "anthropic":
        from aar_ray.agents.backends import AnthropicBackend

        return AnthropicBackend(b.model, api_key_env=b.api_key_env or "ANTHROPIC_API_KEY",
                                base_url=b.base_url or None, **common)
    if kind == "openai":
        from aar_ray.agents.backends import OpenAICompatibleBackend

        return OpenAICompatibleBackend(b.model, b.base_url, api_key_env=b.api_key_env or None,
                                       tool_choice=b.tool_choice, **common)
    raise ValueError(f"backend.kind={kind!r}; allowed: search, anthropic, openai")


def context_settings(backend: BackendConfig) -> ContextSettings:
    return ContextSettings(window=backend.context_window, max_tokens=backend.max_tokens_per_turn,
                           compact_at=backend.compact_at, compact_to=backend.compact_to,
                           keep_recent_turns=backend.keep_recent_turns,
                           clear_over_chars=backend.clear_tool_results_over,
                           summary_max_tokens=backend.summary_max_tokens)


class Researcher:
    def __init__(self, config: ResearcherConfig, tools: ToolContext, state_dir: str | Path,
                 control_path: str | Path | None = None, execute: Execute | None = None):
        self.config, self.tools = config, tools
        self.state_dir = Path(state_dir)
        self.checkpoint = Checkpoint(self.state_dir)
        self.state_path = self.checkpoint.state_path
        self.control_path = Path(control_path) if control_path else None
        self.backend = make_backend(config, best_pgr=self._best_released_pgr)
        self.execute = execute or call_tool  # tests pass a fast stand-in
        self.system = SYSTEM.format(direction=config.direction)
        self.context = Context(self.checkpoint, context_settings(config.backend))
        self.steps, self.agent_seconds, self.stopped = 0, 0.0, None
        self.overflows, self.sent_chars = 0, 0
        self._load()
        tools.budget = self.budget

    @property
    def messages(self) -> list[dict]:
        """The conversation as it is sent (cleared and compacted); `read_history` has it all."""
        return self.context.messages

    # --- checkpoint -------------------------------------------------------------------------
    def _load(self) -> None:
        limits = self.config.limits
        self.budget = Budget(max_tokens=limits.max_tokens, max_dollars=limits.max_dollars,
                             max_experiments=limits.max_experiments, max_agent_hours=limits.max_agent_hours,
                             name=self.config.name)
        state = self.checkpoint.load_state()
        self.context.replay(self.checkpoint.records(repair=True))
        if state is not None:
            self.steps, self.agent_seconds, self.stopped = state["steps"], state["agent_seconds"], state["stopped"]
            self.budget = Budget.from_dict(state["budget"])
            saved = state.get("context") or {}
            self.context.estimator.load(saved.get("estimator") or {})
            if saved.get("window") and not self.config.backend.context_window:  # configured wins
                self.context.settings.window = saved["window"]  # read from the server, or learned
        if not self.context.items:
            self.context.append(user_message("Begin."))

    def _save(self) -> None:
        self.checkpoint.save_state({
            "config": asdict(self.config), "steps": self.steps, "agent_seconds": self.agent_seconds,
            "stopped": self.stopped, "budget": self.budget.to_dict(),
            "notes_path": str(Path(self.tools.workspace) / NOTES_FILE),
            "context": {"window": self.context.settings.window, "estimator": self.context.estimator.to_dict(),
                        "messages_in_context": len(self.context.items), "events": self.context.events},
            # Empty: the conversation is in log.jsonl (read_history). Kept for old readers.
            "messages": []})

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        while self.stopped is None:
            says = self._operator_says()
            if says == "pause":
                time.sleep(1.0)
            elif says != "stop":
                self.step()
        self._log_trace()
        self.checkpoint.close()
        return self.status()

    def _log_trace(self) -> None:
        """The whole conversation (the checkpoint log) and the final notes, as artifacts of the
        researcher's MLflow run (under the campaign's)."""
        tracker, run_id = self.tools.tracker, self.tools.parent_run_id
        if tracker is not None and run_id:
            tracker.client.log_text(run_id, json.dumps({"status": self.status(), "notes": final_notes(self.state_dir),
                                                        "messages_in_context": self.messages}, indent=1),
                                    f"traces/{self.config.name}.json")
            if self.checkpoint.log_path.exists():
                tracker.client.log_artifact(run_id, str(self.checkpoint.log_path), f"traces/{self.config.name}")

    def _operator_says(self) -> str:
        """`aar campaign pause|stop [--researcher NAME]` writes the control file read here."""
        if self.control_path is None or not self.control_path.exists():
            return "run"
        control = json.loads(self.control_path.read_text())
        says = control.get("researchers", {}).get(self.config.name) or control.get("campaign", "run")
        if says == "stop":
            self.stopped = "stopped by the operator"
            self._save()
        return says

    def step(self) -> None:
        started = time.time()
        # Out of experiments a researcher may still post and finish; out of anything else, it stops.
        spent_out = self.budget.exhausted()
        if spent_out not in (None, "experiments"):
            self.stopped = f"budget: {spent_out} cap reached"
            self._save()
            return
        try:
            if not self._finish_pending_calls():
                self._take_turn()
        except BudgetExceeded as err:
            self.stopped = f"budget: {err}"
        self.steps += 1
        self.agent_seconds += time.time() - started
        self.budget.charge(hours=(time.time() - started) / 3600)
        if self.tools.finished is not None:
            self.stopped = f"finished: {self.tools.finished}"
        elif self.stopped is None and self.steps >= self.config.limits.max_steps:
            self.stopped = f"max_steps {self.config.limits.max_steps} reached"
        self._save()

    # --- one turn ---------------------------------------------------------------------------
    def _system_prompt(self) -> str:
        """The system prompt (with the direction) and the notes file as it is now."""
        try:
            notes, more = read_text(self.tools, NOTES_FILE, NOTES_LIMIT)
        except (ToolError, OSError):
            notes, more = "", False
        self.context.record_notes(notes)
        shown = notes + ("\n[... longer than the limit: condense your notes]" if more else "")
        return self.system + NOTES_BLOCK.format(file=NOTES_FILE, chars=len(notes), limit=NOTES_LIMIT,
                                                notes=shown or "(none yet: write them with update_notes)")

    def _window(self) -> int:
        settings = self.context.settings
        if settings.window <= 0:
            ask = getattr(self.backend, "context_window", None)
            settings.window = int(ask()) if callable(ask) else SEARCH_CONTEXT_WINDOW
        return settings.window

    def _fit(self, system: str, force: bool = False) -> int:
        self._window()
        return self.context.fit(system, SPECS, self._summarise, force=force)

    def _paid_step(self, system: str, messages: list[dict], tools: list, max_tokens: int):
        """Every model call goes through here: refused with `BudgetExceeded` before anything is
        sent if its upper-bound cost could pass a cap, charged its actual usage once answered."""
        tokens, dollars = self.backend.estimate_cost(system, messages, tools, max_tokens)
        self.budget.check(tokens=tokens, dollars=dollars)
        turn = self.backend.step(system, messages, tools, max_tokens)
        self.budget.charge(tokens=turn.usage.total_tokens, dollars=turn.dollars)
        return turn

    def _call(self, system: str, max_tokens: int):
        """One turn of the conversation. `self.sent_chars`: the characters sent."""
        self.sent_chars = self.context.chars(system, SPECS)
        return self._paid_step(system, self.messages, SPECS, max_tokens)

    def _take_turn(self) -> None:
        system = self._system_prompt()
        try:
            turn = self._call(system, self._fit(system))
        except ContextLengthExceeded as err:
            # The estimate was wrong or the window smaller than configured: learn, compact, retry once.
            logger.warning("%s: %s; compacting and retrying", self.config.name, err)
            self.context.observe_overflow(self.sent_chars, err)
            try:
                turn = self._call(system, self._fit(system, force=True))
            except ContextLengthExceeded as again:
                self.context.observe_overflow(self.sent_chars, again)
                self.overflows += 1
                if self.overflows >= MAX_OVERFLOWS:
                    self.stopped = f"context: {self.overflows} context-length errors in a row ({again})"
                return
        self.overflows = 0
        self.context.observe(self.sent_chars, turn.usage.prompt_tokens)
        extra = {"reasoning": turn.reasoning} if turn.reasoning else {}
        self.context.append(turn.to_message(), **extra)
        for message in turn.error_results():
            self.context.append(message)
        # the calls are on disk before any of them runs
        if not turn.tool_calls:
            self.context.append(user_message("Use the tools to make progress, or call finish."))
        self._finish_pending_calls()

    def _finish_pending_calls(self) -> bool:
        """Run the tool calls of the last assistant turn that have no result yet."""
        last = next((m for m in reversed(self.messages) if m["role"] == "assistant"), None)
        answered = {m["tool_call_id"] for m in self.messages if m["role"] == "tool"}
        pending = [c for c in (last or {}).get("tool_calls", []) if c["id"] not in answered]
        for call in pending:
            content, is_error = self.execute(self.tools, call["name"], call["input"], call["id"])
            self.context.append(tool_result_message(call["id"], content, is_error))
        return bool(pending)

    # --- compaction -------------------------------------------------------------------------
    def _summarise(self, old: list[dict], max_tokens: int) -> tuple[str, str]:
        """A summary of `old` by the researcher's own model (folded over chunks that fit the
        window), or a deterministic digest: for the search backend, and when the model call
        fails or the budget refuses it."""
        digest_chars = max_tokens * 3
        if isinstance(self.backend, SearchBackend):
            return digest(old, digest_chars), "digest"
        settings, estimator = self.context.settings, self.context.estimator
        system = SUMMARY_SYSTEM.format(words=max(50, int(max_tokens * 0.6)))
        room = settings.window - max_tokens - int(settings.margin * settings.window) - estimator.tokens(len(system))
        chunk_chars = max(2000, int(room * 0.8 * estimator.chars_per_token) - 2 * digest_chars)
        chunks, current = [], ""
        for line in render(old):
            if current and len(current) + len(line) + 1 > chunk_chars:
                chunks.append(current)
                current = ""
            current += line[:chunk_chars] + "\n"
        chunks.append(current)
        summary = ""
        try:
            for i, chunk in enumerate(chunks):
                previous = f"Summary of the conversation before this part:\n{summary}\n\n" if summary else ""
                merge = ", merging it with the earlier summary" if summary else ""
                prompt = [user_message(SUMMARY_PROMPT.format(previous=previous, chunk=chunk, merge=merge))]
                turn = self._paid_step(system, prompt, [], max_tokens)
                summary = turn.text.strip() or summary
            if summary:
                return summary, "model"
        except (BackendError, BudgetExceeded) as err:
            logger.warning("%s: summary by the model failed (%s); using a digest", self.config.name, err)
        return digest(old, digest_chars), "digest"

    def status(self) -> dict:
        models = self.backend.by_model() if hasattr(self.backend, "by_model") else []
        return {"name": self.config.name, "steps": self.steps, "stopped": self.stopped,
                "agent_seconds": round(self.agent_seconds, 2), "spent": self.budget.spent.to_dict(),
                **({"models": models} if models else {})}

    def _best_released_pgr(self) -> float:
        """The best PGR this researcher was shown (released feedback, never the exact record)."""
        shown = [r.shown_pgr for r in self.tools.forum.results(researcher=self.config.name)
                 if r.shown_pgr is not None]
        return max(shown, default=0.0)
