"""Pre-flight: check a researcher backend before a campaign starts its researchers.

For an OpenAI-compatible server (``backend.kind: openai``, e.g. ``vllm serve``):

1. **up**: ``GET {base_url}/models`` answers, waiting up to ``backend.startup_timeout_s`` while
   the connection is refused or the server answers 5xx (vLLM listens only once its model is
   loaded, minutes for a large one);
2. **right address and model**: a bare 404 means the base_url lacks the API prefix (``/v1``);
   the configured model must be among the served ones (else the list is named); the served
   ``max_model_len`` is the context window the researchers will fit under;
3. **tools work**: one tiny request with one tool and ``tool_choice`` naming it must come back as
   a tool call of that tool, and the same request with the configured ``backend.tool_choice``
   (``auto``, or ``required`` for a model too small to choose; what researchers send) must too: a 400 ("auto" tool choice requires ...), the call written as text in the
   content, or a plain-text answer (the chat template dropped the tools) are each refused with
   a message naming ``--enable-auto-tool-choice``, ``--tool-call-parser`` and ``--chat-template``.

For Anthropic it checks that the API key is set (no request is made: they cost money); the
search backend needs nothing. `preflight` returns what it found, or raises `PreflightError`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from aar_ray.agents.backends import (
    ANTHROPIC_CONTEXT_WINDOW,
    BackendError,
    BackendRequestError,
    OpenAICompatibleBackend,
    RetriesExhausted,
    RetryPolicy,
    ToolSpec,
    read_api_key,
    user_message,
)
from aar_ray.errors import UserError

VLLM_FLAGS = ("start the server with --enable-auto-tool-choice and --tool-call-parser <the parser for "
              "this model: hermes for Qwen2.5/Qwen3, llama3_json for Llama 3.1, mistral, ...>, and if the "
              "model's own chat template has no place for tools, --chat-template <a tool-use template> "
              "(vLLM's examples/tool_chat_template_*.jinja)")
PROBE_TOOL = ToolSpec("preflight_echo", "Echo a word back. Used to check that tool calling works.",
                      {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"],
                       "additionalProperties": False})
PROBE_PROMPT = ("This is an automated check of tool calling. Call the tool preflight_echo with the word "
                "\"ready\". Do not answer in text.")


class PreflightError(UserError, RuntimeError):
    pass


def preflight(backend_config: Any, *, poll_s: float = 2.0, sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> dict:
    """Check the backend a campaign's researchers will use (a `BackendConfig`); returns
    ``{"kind", "model", "context_window", ...}`` or raises `PreflightError` saying what to fix."""
    kind = backend_config.kind
    if kind == "search":
        return {"kind": "search", "ok": True}
    if kind == "anthropic":
        if backend_config.temperature is not None or backend_config.top_p is not None:
            raise PreflightError("backend.temperature and backend.top_p must be unset for anthropic: the Messages "
                                 "API (version 2026-10-21) refuses them")
        if backend_config.tool_choice != "auto":
            raise PreflightError(f"backend.tool_choice={backend_config.tool_choice!r} is for openai backends; "
                                 "use auto with anthropic")
        try:
            read_api_key(backend_config.api_key_env or "ANTHROPIC_API_KEY", f"Anthropic {backend_config.model}")
        except BackendError as err:
            raise PreflightError(str(err)) from None
        return {"kind": "anthropic", "model": backend_config.model, "ok": True,
                "context_window": backend_config.context_window or ANTHROPIC_CONTEXT_WINDOW}
    if kind != "openai":
        raise PreflightError(f"backend.kind={kind!r}; allowed: search, anthropic, openai")
    return _openai(backend_config, poll_s, sleep, clock)


def _openai(config, poll_s: float, sleep, clock) -> dict:
    if not config.base_url:
        raise PreflightError("backend.base_url is empty; give the server's address, e.g. http://head:8000/v1")
    where = f"{config.base_url} ({config.model})"
    try:
        backend = OpenAICompatibleBackend(
            config.model, config.base_url, api_key_env=config.api_key_env or None, timeout=120.0,
            strict_tools=config.strict_tools, temperature=config.temperature, top_p=config.top_p,
            tool_choice=config.tool_choice, retry_policy=RetryPolicy(max_retries=0))
    except BackendError as err:
        raise PreflightError(str(err)) from None
    try:
        models = _wait_for_models(backend, config.startup_timeout_s, poll_s, sleep, clock)
        served = {str(m.get("id")): m for m in models}
        if config.model not in served:
            raise PreflightError(f"{config.base_url} serves {sorted(served) or 'no model'}, not {config.model!r}: "
                                 f"set backend.model to one of them, or start vLLM with "
                                 f"--served-model-name {config.model}")
        window = config.context_window or int(served[config.model].get("max_model_len") or 0) or None
        forced = _probe(backend, {"type": "function", "function": {"name": PROBE_TOOL.name}}, where)
        auto = _probe(backend, config.tool_choice, where)  # the mode researchers will use
    finally:
        backend.close()
    return {"kind": "openai", "model": config.model, "base_url": config.base_url, "ok": True,
            "context_window": window, "served_models": sorted(served), "forced_tool_call": forced,
            "auto_tool_call": auto}


def _wait_for_models(backend: OpenAICompatibleBackend, timeout_s: float, poll_s: float, sleep, clock) -> list:
    deadline = clock() + timeout_s
    while True:
        try:
            return backend.models()
        except RetriesExhausted as err:  # refused, timed out or 5xx: still starting
            last = err
        except BackendRequestError as err:
            if err.status == 404:
                hint = ("" if backend.base_url.endswith("/v1") else
                        f"; backend.base_url usually ends with the API prefix, e.g. {backend.base_url}/v1")
                raise PreflightError(f"{backend.base_url}/models answered 404{hint}") from None
            raise PreflightError(f"{backend.base_url}/models: {err}") from None
        if clock() >= deadline:
            raise PreflightError(f"{backend.base_url} did not come up within backend.startup_timeout_s="
                                 f"{timeout_s:g} s (last: {last}); is the server running, and still "
                                 f"loading its model?")
        sleep(min(poll_s, max(0.0, deadline - clock())))


def _probe(backend: OpenAICompatibleBackend, tool_choice, where: str) -> dict:
    mode = tool_choice if tool_choice in ("auto", "required") else "forced"
    try:
        turn = backend.step("", [user_message(PROBE_PROMPT)], [PROBE_TOOL], 128, tool_choice=tool_choice)
    except BackendRequestError as err:
        raise PreflightError(f"tool calling does not work on {where}: the {mode} tool-call check was "
                             f"refused ({err}); {VLLM_FLAGS}") from None
    except BackendError as err:
        raise PreflightError(f"{where}: the {mode} tool-call check failed ({err})") from None
    calls = [c for c in turn.tool_calls if c.error is None and c.name == PROBE_TOOL.name]
    if calls:
        return {"name": calls[0].name, "input": calls[0].input}
    if turn.tool_calls:  # recognised only as text
        why = (f"the call came back as text in the reply ({json.dumps(turn.tool_calls[0].error)[:160]}...), "
               f"so the server's tool-call parser is off or wrong for this model")
    else:
        why = (f"the reply was plain text ({turn.text[:120]!r}), no tool call: the chat template may have "
               f"no place for tools, or tool calling is not enabled")
    hint = ("; a model too small to choose between prose and a call can be held to calls with "
            "backend.tool_choice=required") if mode == "auto" and not turn.tool_calls else ""
    raise PreflightError(f"tool calling does not work on {where} ({mode} check): {why}; {VLLM_FLAGS}{hint}")
