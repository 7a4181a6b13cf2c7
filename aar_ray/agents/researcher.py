"""One researcher: a Ray actor that talks to its backend and runs the tools it asks for.

The loop is deliberately plain: ask the backend for a turn, save it, run each tool call, save
each result. Saving before a tool runs is what makes resume exact: a restarted researcher finds
the calls that have no result yet and runs just those, and `run_experiment` answers an already
recorded call from the forum's results instead of running it again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aar_ray.agents.backends import tool_result_message, user_message
from aar_ray.agents.budget import Budget, BudgetExceeded
from aar_ray.agents.search import SearchBackend
from aar_ray.agents.tools import SPECS, ToolContext, call_tool


@dataclass
class BackendConfig:
    kind: str = "search"  # search | anthropic | openai
    model: str = ""
    base_url: str = ""  # openai: the endpoint, e.g. http://head:8000/v1; anthropic: optional proxy
    api_key_env: str = ""  # default: ANTHROPIC_API_KEY for anthropic, none for openai
    max_tokens_per_turn: int = 4096


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


SYSTEM = """You are an alignment researcher working on weak-to-strong supervision, one of several
working in parallel. Your starting direction (a place to begin, not a rule):

{direction}

Explore cheaply first, then exploit what works. Share findings on the forum and read what others
found. Call describe_task first. Call finish when you are done or your budget is spent."""


def make_backend(config: ResearcherConfig):
    kind = config.backend.kind
    if kind == "search":
        return SearchBackend(config.candidates or None)
    if kind == "anthropic":
        from aar_ray.agents.backends import AnthropicBackend

        return AnthropicBackend(config.backend.model, api_key_env=config.backend.api_key_env or "ANTHROPIC_API_KEY",
                                base_url=config.backend.base_url or None)
    if kind == "openai":
        from aar_ray.agents.backends import OpenAICompatibleBackend

        return OpenAICompatibleBackend(config.backend.model, config.backend.base_url,
                                       api_key_env=config.backend.api_key_env or None)
    raise ValueError(f"backend.kind={kind!r}; allowed: search, anthropic, openai")


class Researcher:
    def __init__(self, config: ResearcherConfig, tools: ToolContext, state_dir: str | Path,
                 control_path: str | Path | None = None):
        self.config, self.tools = config, tools
        self.state_path = Path(state_dir) / "state.json"
        self.control_path = Path(control_path) if control_path else None
        self.backend = make_backend(config)
        self.system = SYSTEM.format(direction=config.direction)
        self.messages: list[dict] = [user_message("Begin.")]
        self.steps, self.agent_seconds, self.stopped = 0, 0.0, None
        self._load()
        tools.budget = self.budget

    # --- checkpoint -------------------------------------------------------------------------
    def _load(self) -> None:
        limits = self.config.limits
        self.budget = Budget(max_tokens=limits.max_tokens, max_dollars=limits.max_dollars,
                             max_experiments=limits.max_experiments, max_agent_hours=limits.max_agent_hours)
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            self.messages, self.steps = state["messages"], state["steps"]
            self.agent_seconds, self.stopped = state["agent_seconds"], state["stopped"]
            self.budget = Budget.from_dict(state["budget"])

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config": asdict(self.config), "messages": self.messages,
                                   "steps": self.steps, "agent_seconds": self.agent_seconds,
                                   "stopped": self.stopped, "budget": self.budget.to_dict()}))
        tmp.replace(self.state_path)  # atomic: a crash leaves the old or the new state, not half

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        while self.stopped is None:
            says = self._operator_says()
            if says == "pause":
                time.sleep(1.0)
            elif says != "stop":
                self.step()
        self._log_trace()
        return self.status()

    def _log_trace(self) -> None:
        """The whole conversation, as an artifact of the campaign's MLflow run."""
        tracker, run_id = self.tools.tracker, self.tools.parent_run_id
        if tracker is not None and run_id:
            tracker.client.log_text(run_id, json.dumps({"status": self.status(), "messages": self.messages},
                                                       indent=1), f"traces/{self.config.name}.json")

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
        elif self.steps >= self.config.limits.max_steps:
            self.stopped = f"max_steps {self.config.limits.max_steps} reached"
        self._save()

    def _take_turn(self) -> None:
        max_tokens = self.config.backend.max_tokens_per_turn
        tokens, dollars = self.backend.estimate_cost(self.system, self.messages, SPECS, max_tokens)
        self.budget.check(tokens=tokens, dollars=dollars, hours=0.0)  # refuse before paying
        turn = self.backend.step(self.system, self.messages, SPECS, max_tokens)
        self.budget.charge(tokens=turn.usage.total_tokens, dollars=turn.dollars)
        self.messages.append(turn.to_message())
        self.messages.extend(turn.error_results())
        self._save()  # the calls are on disk before any of them runs
        if not turn.tool_calls:
            self.messages.append(user_message("Use the tools to make progress, or call finish."))
        self._finish_pending_calls()

    def _finish_pending_calls(self) -> bool:
        """Run the tool calls of the last assistant turn that have no result yet."""
        last = next((m for m in reversed(self.messages) if m["role"] == "assistant"), None)
        answered = {m["tool_call_id"] for m in self.messages if m["role"] == "tool"}
        pending = [c for c in (last or {}).get("tool_calls", []) if c["id"] not in answered]
        for call in pending:
            content, is_error = call_tool(self.tools, call["name"], call["input"], call["id"])
            self.messages.append(tool_result_message(call["id"], content, is_error))
            self._save()
        return bool(pending)

    def status(self) -> dict:
        return {"name": self.config.name, "steps": self.steps, "stopped": self.stopped,
                "agent_seconds": round(self.agent_seconds, 2), "spent": self.budget.spent.to_dict()}
