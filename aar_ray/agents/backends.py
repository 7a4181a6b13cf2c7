"""LLM backends that researcher agents think through: one neutral conversation format, two
providers (Claude through the `anthropic` SDK, any OpenAI-compatible chat endpoint such as a model
served by our own vLLM), one retry policy, and token/dollar accounting for every call.

Conversation format
-------------------
An agent keeps its conversation as plain dicts, independent of the provider (and JSON-friendly,
so it can be checkpointed):

- ``{"role": "user", "content": str}``
- ``{"role": "assistant", "content": str, "tool_calls": [{"id": str, "name": str, "input": dict}]}``
  (``tool_calls`` may be absent or empty)
- ``{"role": "tool", "tool_call_id": str, "content": str, "is_error": bool}``: the result of one
  tool call; a run of tool messages answers the calls of the assistant message before it.

The system prompt and the tools (`ToolSpec`: name, description, JSON-schema `input_schema`) are
passed separately on each call. A call returns a `Turn`: the assistant's `text`, its
`tool_calls` (`ToolCall`), a `stop_reason` of ``"end"``, ``"tool_use"`` or ``"max_tokens"``, the
`usage` (`Usage`: uncached input, output, cache-read and cache-write tokens), the `dollars` it
cost and the model that answered. ``turn.to_message()`` is the assistant message to append.

A tool call whose arguments could not be used (malformed JSON, not an object, or cut off because
the reply hit max_tokens) is still returned, with `ToolCall.error` set and an empty input: the
agent must not run it, and should answer it with ``turn.error_results()``, tool messages with
``is_error: True`` that tell the model what went wrong so it can try again. Nothing in a reply
crashes the backend.

Provider mapping
----------------
Anthropic (`AnthropicBackend`): tool results become ``tool_result`` blocks in a user message;
consecutive tool messages (and a user message right after them) merge into one user turn, tool
results first, as the Messages API requires. Prompt caching: ``cache_control: ephemeral`` marks
three breakpoints (the API allows four) in the order the API renders the prompt, tools, then
system, then messages: the last tool definition and the system prompt (the stable prefix), and
the last block of the last message, so the growing conversation is written to the cache on each
call and read back on the next.

OpenAI-compatible (`OpenAICompatibleBackend`): a plain HTTP POST to ``{base_url}/chat/completions``
with tools in the ``function`` format; tool-call arguments arrive as a JSON string. Tool messages
become ``role: tool`` messages; the format has no error flag, so an error result is prefixed with
``ERROR:``. A vLLM server needs ``--enable-auto-tool-choice --tool-call-parser <parser>`` to emit
tool calls. Usage: ``prompt_tokens`` (less any ``cached_tokens``) and ``completion_tokens``.

Retries and errors
------------------
Both backends retry HTTP 429, 500, 502, 503, 504 and 529 (overloaded), connection errors and
timeouts, with exponential backoff and jitter, waiting exactly as long as a ``retry-after``
header asks when there is one (`RetryPolicy`). The SDK's own retries are off, so this policy is
the only one. Giving up raises `RetriesExhausted`; other HTTP errors raise `BackendRequestError`
at once. The API key is read from an environment variable (`MissingAPIKeyError` names it when it
is absent) and never appears in a repr, an exception message or a log line.

Context length
--------------
Every backend knows its model's context window (`context_window()`): configured, or read from
the server (an OpenAI-compatible server's ``GET /models`` gives ``max_model_len``), or the
model's published window (Claude: 200,000 tokens without the 1M beta). A request the server
refuses for its length raises `ContextLengthExceeded` (a `BackendRequestError`) with the window
and prompt size when the message gives them, so the researcher can compact and retry
(`aar_ray.agents.context`).

Tool calls, sampling, reasoning
-------------------------------
Tool schemas can be sent ``strict`` (constrained decoding of the arguments): on the Messages API
the schema loses the keywords strict mode does not take (numeric bounds, string lengths; they
move into the description, and the tools check them anyway); on the chat API it becomes the
strict style (every property required, optional ones nullable) and the nulls the model sends for
optional properties are dropped again before the call is used. The chat request names
``tool_choice: "auto"`` so a vLLM started without ``--enable-auto-tool-choice`` refuses loudly
instead of answering tools with text. ``temperature`` and ``top_p`` are sent to an OpenAI-compatible
server when configured; the Messages API (version 2026-10-21, anthropic SDK 2.x) refuses them, so
`AnthropicBackend` does too, at construction. A
``reasoning`` (or ``reasoning_content``) field is kept apart from the text (`Turn.reasoning`). A
tool call that arrives as text (``<tool_call>...`` in the content, no ``tool_calls``: the server's
parser did not recognise it) is returned as a `ToolCall` with `error` set, so it is answered with
an error the model can act on, never run and never silently lost.

Cost
----
Prices per million tokens come from ``conf/prices.yaml`` (`load_price_table`). Before a call,
``estimate_cost`` gives an upper bound on its tokens and dollars; the researcher checks that
bound against its budget (`aar_ray.agents.budget`), so a call that could pass a cap is refused
before any request is sent, and charges the actual usage afterwards.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, TypeVar, runtime_checkable

try:  # the anthropic SDK ships its HTTP client as `httpx2`; plain `httpx` has the same API
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

from aar_ray import environment
from aar_ray.resources import conf_file

logger = logging.getLogger(__name__)

StopReason = Literal["end", "tool_use", "max_tokens"]
T = TypeVar("T")


# ==== neutral conversation format ================================================================
@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict


@dataclass
class ToolCall:
    id: str
    name: str
    input: dict
    error: str | None = None  # set when the model's arguments cannot be used; see module doc

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "input": self.input}


@dataclass
class Usage:
    input_tokens: int = 0  # input not read from or written to the cache
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def prompt_tokens(self) -> int:
        """Every input token of the call, cached or not: what counts against the context window."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cache_read_tokens + other.cache_read_tokens,
                     self.cache_write_tokens + other.cache_write_tokens)


@dataclass
class Turn:
    text: str
    tool_calls: list[ToolCall]
    stop_reason: StopReason
    usage: Usage
    dollars: float
    raw_model: str
    reasoning: str = ""  # a reasoning model's thinking, kept apart from the text (not sent back)

    def to_message(self) -> dict:
        """The assistant message to append to the conversation."""
        return {"role": "assistant", "content": self.text,
                "tool_calls": [call.to_dict() for call in self.tool_calls]}

    def error_results(self) -> list[dict]:
        """Tool messages answering the calls whose arguments could not be used."""
        return [tool_result_message(call.id, call.error, is_error=True)
                for call in self.tool_calls if call.error]


def user_message(text: str) -> dict:
    return {"role": "user", "content": text}


def tool_result_message(tool_call_id: str, content: str, is_error: bool = False) -> dict:
    return {"role": "tool", "tool_call_id": tool_call_id, "content": content, "is_error": is_error}


def validate_messages(messages: list[dict]) -> None:
    """Fail early, with the message's position, on a conversation the providers would reject
    with a less helpful error (or, worse, misread)."""
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant", "tool"):
            raise ValueError(f"message {i}: unknown role {role!r} (expected user, assistant or tool)")
        if not isinstance(message.get("content", ""), str):
            raise ValueError(f"message {i}: content must be a string")
        if role == "tool" and not message.get("tool_call_id"):
            raise ValueError(f"message {i}: a tool message needs a tool_call_id")
        for call in message.get("tool_calls") or []:
            if not {"id", "name", "input"} <= set(call):
                raise ValueError(f"message {i}: a tool call needs id, name and input")


# ==== errors and secrets =========================================================================
class BackendError(RuntimeError):
    """Base of the backends' errors. Messages never contain the API key. Extra attributes are
    keyword arguments so that the exceptions survive pickling (Ray ships them between workers)."""

    def __reduce__(self):
        return (self.__class__, self.args, self.__dict__)


class MissingAPIKeyError(BackendError):
    pass


class RetriesExhausted(BackendError):
    def __init__(self, message: str, attempts: int = 0, last_status: int | None = None):
        super().__init__(message)
        self.attempts = attempts
        self.last_status = last_status


class BackendRequestError(BackendError):
    """The provider rejected the request with a status that retrying will not fix (4xx)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ContextLengthExceeded(BackendRequestError):
    """The server refused the request because the prompt (plus max_tokens) does not fit the
    model's context window. `window` and `prompt_tokens` are what the message said, when it did."""

    def __init__(self, message: str, status: int | None = None, window: int | None = None,
                 prompt_tokens: int | None = None):
        super().__init__(message, status=status)
        self.window = window
        self.prompt_tokens = prompt_tokens


class BackendResponseError(BackendError):
    """The provider answered 2xx with a body that is not a usable reply."""


# What servers say when a prompt does not fit: vLLM ("This model's maximum context length is 4096
# tokens. However, your prompt contains at least 4097 input tokens ...", or "... you requested
# 4200 tokens (4000 in the messages, 200 in the completion)", or "'max_tokens' ... is too large:
# ... your request has 10 input tokens"), the Messages API ("prompt is too long: 208656 tokens >
# 200000 maximum", "input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000"),
# OpenAI (code context_length_exceeded), llama.cpp/SGLang ("exceeds the context size").
_OVERFLOW_HINTS = ("maximum context length", "prompt is too long", "context_length_exceeded",
                   "exceed context limit", "context window", "context length", "context size",
                   "maximum model length", "too many tokens", "model_context_window_exceeded")
_WINDOW_PATTERNS = (r"maximum context length is (\d+)", r"tokens > (\d+) maximum",
                    r"> (\d+), decrease", r"exceed context limit: \d+ \+ \d+ > (\d+)",
                    r"context (?:length|size|window)(?: of| is)? (\d+)")
_PROMPT_PATTERNS = (r"prompt contains at least (\d+)", r"(\d+) input tokens", r"\((\d+) in the messages",
                    r"messages resulted in (\d+)", r"prompt is too long: (\d+)",
                    r"exceed context limit: (\d+) \+", r"request has (\d+)")


def context_overflow(status: int, detail: str, message: str | None = None) -> ContextLengthExceeded | None:
    """The `ContextLengthExceeded` an HTTP error with this `detail` (the server's message) stands
    for, raised with `message` (default: the detail), or None if it is another error."""
    lowered = detail.lower()
    if status not in (400, 413, 422) or not any(hint in lowered for hint in _OVERFLOW_HINTS):
        return None

    def first(patterns) -> int | None:
        for pattern in patterns:
            found = re.search(pattern, lowered)
            if found:
                return int(found.group(1))
        return None

    return ContextLengthExceeded(message if message is not None else detail, status=status,
                                 window=first(_WINDOW_PATTERNS), prompt_tokens=first(_PROMPT_PATTERNS))


class _Secret:
    """An API key that does not print itself: repr/str show a placeholder, and `redact`
    scrubs it from any text (such as a provider's error message) before it is raised or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        return text.replace(self._value, "[redacted]") if self._value else text

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def read_api_key(env_var: str, provider: str) -> _Secret:
    value = environment.secret(env_var)
    if not value:
        raise MissingAPIKeyError(
            f"{provider}: environment variable {env_var} is not set or empty; it must hold the "
            f"API key (export {env_var}=... in the environment the researcher runs in)")
    return _Secret(value)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ==== retry policy ===============================================================================
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 529})


class TransientError(Exception):
    """Raised by a backend's single attempt for a failure worth retrying."""

    def __init__(self, reason: str, retry_after_s: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.status = status


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter; a server's ``retry-after`` wins over the backoff.

    Retry k (0-based) waits ``min(max_delay_s, base_delay_s * 2**k)`` scaled by a random factor
    in [0.5, 1] (so researchers that failed together do not retry together), or the
    ``retry-after`` the server sent, capped at `max_retry_after_s`. `sleep` and `rng` are
    injectable so tests run without waiting."""

    max_retries: int = 6
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_retry_after_s: float = 600.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, retry_index: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.max_retry_after_s)
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** retry_index)
        return backoff * (0.5 + 0.5 * self.rng.random())

    def call(self, attempt: Callable[[], T], what: str) -> T:
        """Run `attempt` until it returns, retrying on `TransientError` up to max_retries times."""
        last: TransientError | None = None
        for retry_index in range(self.max_retries + 1):
            try:
                return attempt()
            except TransientError as error:
                last = error
            if retry_index == self.max_retries:
                break
            wait = self.delay_s(retry_index, last.retry_after_s)
            logger.warning("%s: %s; retry %d/%d in %.2fs", what, last.reason, retry_index + 1,
                           self.max_retries, wait)
            self.sleep(wait)
        attempts = self.max_retries + 1
        raise RetriesExhausted(f"{what}: gave up after {attempts} attempts; last error: {last.reason}",
                               attempts=attempts, last_status=last.status)


# ==== prices =====================================================================================
DEFAULT_PRICES_PATH = conf_file("prices.yaml")
OPENAI_COMPATIBLE_PRICES = "openai-compatible"
_SNAPSHOT_SUFFIX = re.compile(r"[-@]\d{8}$")


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float

    def dollars(self, usage: Usage) -> float:
        return (usage.input_tokens * self.input + usage.output_tokens * self.output
                + usage.cache_write_tokens * self.cache_write
                + usage.cache_read_tokens * self.cache_read) / 1e6

    def upper_bound_dollars(self, input_tokens: int, output_tokens: int) -> float:
        """The most `input_tokens` in and `output_tokens` out can cost, whatever the cache does."""
        dearest_input = max(self.input, self.cache_write, self.cache_read)
        return (input_tokens * dearest_input + output_tokens * self.output) / 1e6


def load_price_table(path: str | Path | None = None) -> dict[str, Prices]:
    import yaml

    path = Path(path) if path is not None else DEFAULT_PRICES_PATH
    if not path.is_file():
        raise FileNotFoundError(f"price table {path} not found; pass prices= explicitly")
    data = yaml.safe_load(path.read_text()) or {}
    return _price_table_from_mapping(data)


def _price_table_from_mapping(data: Mapping) -> dict[str, Prices]:
    entries = data.get("models", data)
    return {str(model): Prices(**{k: float(v) for k, v in dict(entry).items()})
            for model, entry in entries.items()}


def lookup_prices(table: Mapping[str, Prices], model: str, fallback: str | None = None) -> Prices:
    """Exact id, then the entry a dated snapshot id belongs to, then `fallback`."""
    if model in table:
        return table[model]
    undated = _SNAPSHOT_SUFFIX.sub("", model)
    if undated in table:
        return table[undated]
    if fallback is not None and fallback in table:
        return table[fallback]
    raise KeyError(f"no price for model {model!r} in the price table (entries: "
                   f"{', '.join(sorted(table))}); add it to conf/prices.yaml or pass prices=")


def resolve_prices(prices: Prices | Mapping | str | Path | None, model: str,
                   fallback: str | None = None) -> Prices:
    """`prices` as given to a backend: a `Prices`, one entry as a mapping
    ({input, output, cache_write, cache_read}), a whole table (mapping or YAML path), or None for
    ``conf/prices.yaml``."""
    if isinstance(prices, Prices):
        return prices
    if isinstance(prices, Mapping) and set(prices) == {"input", "output", "cache_write", "cache_read"}:
        return Prices(**{k: float(v) for k, v in prices.items()})
    if isinstance(prices, Mapping):
        table = _price_table_from_mapping(prices)
    else:
        table = load_price_table(prices)
    return lookup_prices(table, model, fallback)


# ==== cost estimate (before a call) ==============================================================
# Framing the provider adds around each message, and the hidden instructions it adds when tools
# are offered (a few hundred tokens on current Claude models); generous on purpose.
PER_MESSAGE_OVERHEAD_TOKENS = 16
TOOL_USE_OVERHEAD_TOKENS = 1000


def estimate_input_tokens(system: str, messages: list[dict], tools: list[ToolSpec],
                          bytes_per_token: float = 1.0) -> int:
    """An upper bound on the prompt's tokens. With ``bytes_per_token=1`` it is a true bound for
    byte-level BPE tokenizers (a token covers at least one byte of UTF-8); a larger value gives a
    tighter estimate that a long, unusual prompt may exceed."""
    payload = json.dumps({"system": system, "messages": messages,
                          "tools": [asdict(tool) for tool in tools]}, ensure_ascii=False)
    content_tokens = math.ceil(len(payload.encode("utf-8")) / bytes_per_token)
    overhead = PER_MESSAGE_OVERHEAD_TOKENS * (len(messages) + 1)
    return content_tokens + overhead + (TOOL_USE_OVERHEAD_TOKENS if tools else 0)


def estimate_cost(prices: Prices, system: str, messages: list[dict], tools: list[ToolSpec],
                  max_tokens: int, bytes_per_token: float = 1.0) -> tuple[int, float]:
    input_tokens = estimate_input_tokens(system, messages, tools, bytes_per_token)
    return input_tokens + max_tokens, prices.upper_bound_dollars(input_tokens, max_tokens)


# ==== the Backend contract =======================================================================
@runtime_checkable
class Backend(Protocol):
    def step(self, system: str, messages: list[dict], tools: list[ToolSpec], max_tokens: int) -> Turn:
        """One model call: the assistant's next turn after `messages`."""

    def estimate_cost(self, system: str, messages: list[dict], tools: list[ToolSpec],
                      max_tokens: int) -> tuple[int, float]:
        """(tokens, dollars) that the same `step` cannot exceed; used before the call."""


def _parse_arguments(raw: Any) -> tuple[dict, str | None]:
    """Tool arguments as (dict, None), or ({}, why they are unusable)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError as error:
            return {}, f"the arguments are not valid JSON ({error}); received: {_short(raw, 200)}"
    if not isinstance(raw, dict):
        return {}, f"the arguments must be a JSON object, got {type(raw).__name__}"
    return raw, None


TRUNCATED_CALL_ERROR = ("the reply hit max_tokens while writing this tool call, so its arguments "
                        "are incomplete; it was not run. Send it again, shorter if needed.")


def _mark_truncated(calls: list[ToolCall]) -> None:
    """In a reply cut off by max_tokens, the last tool call is the one being written (its
    arguments may even parse, cut at a lucky place; they are still not what the model meant)."""
    if calls:
        calls[-1].input = {}
        calls[-1].error = TRUNCATED_CALL_ERROR


# ==== Anthropic ==================================================================================
EPHEMERAL = {"type": "ephemeral"}
ANTHROPIC_CONTEXT_WINDOW = 200_000


# Keywords the Messages API's strict mode does not take (its JSON Schema subset); a strict tool's
# schema loses them and its description says them instead. The tools check them on every call.
_UNSTRICT_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                      "minLength", "maxLength", "maxItems", "minProperties", "maxProperties")


def _anthropic_strict_schema(schema: Any, dropped: list[str], path: str = "") -> Any:
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _UNSTRICT_KEYWORDS or (key == "minItems" and value not in (0, 1)):
            dropped.append(f"{path or 'input'}: {key} {value}")
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _anthropic_strict_schema(sub, dropped, name) for name, sub in value.items()}
        elif key == "items":
            out[key] = _anthropic_strict_schema(value, dropped, f"{path}[]")
        else:
            out[key] = value
    if out.get("type") == "object":
        out["additionalProperties"] = False
    return out


def to_anthropic_tool(tool: ToolSpec, strict: bool = False) -> dict:
    if not strict:
        return {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}
    dropped: list[str] = []
    schema = _anthropic_strict_schema(tool.input_schema, dropped)
    description = tool.description + (f" (Limits: {'; '.join(dropped)}.)" if dropped else "")
    return {"name": tool.name, "description": description, "input_schema": schema, "strict": True}


def _anthropic_blocks(message: dict) -> tuple[str, list[dict]]:
    role = message["role"]
    if role == "tool":
        return "user", [{"type": "tool_result", "tool_use_id": message["tool_call_id"],
                         "content": message.get("content", ""),
                         "is_error": bool(message.get("is_error", False))}]
    # The API rejects empty text blocks, so an empty text is left out rather than sent.
    blocks = [{"type": "text", "text": message["content"]}] if message.get("content") else []
    if role == "assistant":
        blocks += [{"type": "tool_use", "id": call["id"], "name": call["name"], "input": call["input"]}
                   for call in message.get("tool_calls") or []]
    return role, blocks


def to_anthropic_messages(messages: list[dict]) -> list[dict]:
    """Neutral messages to Messages-API turns: tool results become tool_result blocks in a user
    turn, consecutive same-role messages merge into one turn, and within a user turn the
    tool_result blocks come first (the API requires them right after the tool_use turn)."""
    turns: list[dict] = []
    for message in messages:
        role, blocks = _anthropic_blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return turns


def anthropic_request(model: str, system: str, messages: list[dict], tools: list[ToolSpec],
                      max_tokens: int, prompt_caching: bool = True, strict: bool = False,
                      tool_choice: dict | None = None) -> dict:
    """Keyword arguments for ``client.messages.create`` (also the JSON body sent)."""
    request: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                               "messages": to_anthropic_messages(messages)}
    if system:
        request["system"] = [{"type": "text", "text": system}]
    if tools:
        request["tools"] = [to_anthropic_tool(tool, strict) for tool in tools]
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    if prompt_caching:
        _mark_cache_breakpoints(request)
    return request


def _mark_cache_breakpoints(request: dict) -> None:
    """Cache the prefix up to the last tool, the system prompt and the whole conversation so far.
    Tools and system change rarely, so their breakpoints keep hitting even when the conversation
    is edited; the last message's breakpoint lets the next call read everything before its new
    messages from the cache."""
    if request.get("tools"):
        request["tools"][-1]["cache_control"] = dict(EPHEMERAL)
    if request.get("system"):
        request["system"][-1]["cache_control"] = dict(EPHEMERAL)
    if request["messages"]:
        request["messages"][-1]["content"][-1]["cache_control"] = dict(EPHEMERAL)


def _anthropic_tool_call(block: Mapping) -> ToolCall:
    arguments, error = _parse_arguments(block.get("input"))
    name = block.get("name") or ""
    if not name and error is None:
        error = "the tool call names no tool"
    return ToolCall(id=block.get("id") or f"toolu_{uuid.uuid4().hex[:12]}", name=name,
                    input=arguments, error=error)


def turn_from_anthropic(response: Mapping, prices: Prices) -> Turn:
    """A Messages-API response body (dict) as a Turn."""
    blocks = response.get("content") or []
    text = "\n".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    reasoning = "\n".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking")
    calls = [_anthropic_tool_call(b) for b in blocks if b.get("type") == "tool_use"]
    truncated = response.get("stop_reason") in ("max_tokens", "model_context_window_exceeded")
    if truncated and blocks and blocks[-1].get("type") == "tool_use":
        _mark_truncated(calls)
    raw_usage = response.get("usage") or {}
    usage = Usage(input_tokens=int(raw_usage.get("input_tokens") or 0),
                  output_tokens=int(raw_usage.get("output_tokens") or 0),
                  cache_read_tokens=int(raw_usage.get("cache_read_input_tokens") or 0),
                  cache_write_tokens=int(raw_usage.get("cache_creation_input_tokens") or 0))
    stop: StopReason = "max_tokens" if truncated else "tool_use" if calls else "end"
    return Turn(text=text, tool_calls=calls, stop_reason=stop, usage=usage,
                dollars=prices.dollars(usage), raw_model=str(response.get("model") or ""),
                reasoning=reasoning)


class _PricedBackend:
    """What both HTTP backends share: a repr without secrets and the pre-call cost bound."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r})")

    def estimate_cost(self, system: str, messages: list[dict], tools: list[ToolSpec],
                      max_tokens: int) -> tuple[int, float]:
        return estimate_cost(self.prices, system, messages, tools, max_tokens,
                             self.estimate_bytes_per_token)


class AnthropicBackend(_PricedBackend):
    """Claude through the `anthropic` SDK's Messages API, with tool use and prompt caching."""

    def __init__(self, model: str, api_key_env: str = "ANTHROPIC_API_KEY", base_url: str | None = None,
                 prices: Prices | Mapping | str | Path | None = None, max_retries: int = 6,
                 timeout: float = 600.0, prompt_caching: bool = True,
                 retry_policy: RetryPolicy | None = None, estimate_bytes_per_token: float = 1.0,
                 context_window: int | None = None, strict_tools: bool = False,
                 temperature: float | None = None, top_p: float | None = None):
        import anthropic

        if temperature is not None or top_p is not None:
            raise ValueError(f"AnthropicBackend({model}): temperature and top_p are not accepted by the "
                             f"Messages API this SDK speaks (version 2026-10-21 refuses them with a 400, as do "
                             f"Claude models from Opus 4.7 on); leave backend.temperature and backend.top_p unset")
        self.model = model
        self._context_window = context_window or None
        self.strict_tools = strict_tools
        self.api_key_env = api_key_env
        self.base_url = base_url
        self.prompt_caching = prompt_caching
        self.prices = resolve_prices(prices, model)
        self.retry = retry_policy or RetryPolicy(max_retries=max_retries)
        self.estimate_bytes_per_token = estimate_bytes_per_token
        self._secret = read_api_key(api_key_env, f"AnthropicBackend({model})")
        self._anthropic = anthropic
        # max_retries=0: our RetryPolicy is the only retry loop, so its behaviour is what we test.
        self._client = anthropic.Anthropic(api_key=self._secret.reveal(), base_url=base_url,
                                           max_retries=0, timeout=timeout)

    def step(self, system: str, messages: list[dict], tools: list[ToolSpec], max_tokens: int) -> Turn:
        validate_messages(messages)
        request = anthropic_request(self.model, system, messages, tools, max_tokens, self.prompt_caching,
                                    strict=self.strict_tools)
        response = self.retry.call(lambda: self._send(request), what=f"Anthropic {self.model}")
        return turn_from_anthropic(response, self.prices)

    def context_window(self) -> int:
        """The configured window, else the model's standard one (200,000 tokens for Claude; the
        1M-token window of some models needs a beta header this backend does not send)."""
        return self._context_window or ANTHROPIC_CONTEXT_WINDOW

    def close(self) -> None:
        self._client.close()

    def _send(self, request: dict) -> dict:
        sdk = self._anthropic
        failure: BaseException | None = None
        try:
            message = self._client.messages.create(**request)
            return message.to_dict(mode="json", warnings=False)
        except sdk.APIStatusError as error:
            failure = self._classify_status(error)
        except sdk.APITimeoutError:
            failure = TransientError("request timed out")
        except sdk.APIConnectionError as error:
            failure = TransientError(f"connection error ({self._secret.redact(str(error))})")
        except sdk.APIError as error:  # a 2xx body the SDK could not read
            failure = BackendResponseError(
                f"Anthropic {self.model}: {self._secret.redact(_short(str(error)))}")
        # Raised outside the except blocks so the SDK's exception (whose request object carries
        # the key in its headers) is not chained onto ours.
        raise failure

    def _classify_status(self, error) -> Exception:
        detail = error.api_message or error.type or ""
        reason = self._secret.redact(_short(f"HTTP {error.status_code} {detail}".strip()))
        if error.status_code in RETRYABLE_STATUS:
            return TransientError(reason, parse_retry_after(error.response.headers), error.status_code)
        message = f"Anthropic {self.model}: {reason}"
        return (context_overflow(error.status_code, self._secret.redact(str(detail)), message)
                or BackendRequestError(message, status=error.status_code))


# ==== OpenAI-compatible ==========================================================================
def _nullable(schema: dict) -> dict:
    schema = dict(schema)
    kind = schema.get("type")
    if isinstance(kind, str) and kind != "null":
        schema["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        schema["type"] = [*kind, "null"]
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


def openai_strict_schema(schema: Any) -> Any:
    """The strict style of OpenAI's structured outputs (which vLLM's structural tags follow too):
    every object closed (additionalProperties false) and listing every property as required, an
    optional property allowing null instead. `drop_null_optionals` undoes the nulls."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if out.get("type") == "object" and isinstance(out.get("properties"), dict):
        required = set(out.get("required") or [])
        out["properties"] = {name: (openai_strict_schema(sub) if name in required
                                    else _nullable(openai_strict_schema(sub)))
                             for name, sub in out["properties"].items()}
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = openai_strict_schema(out["items"])
    return out


def drop_null_optionals(call: ToolCall, tools: list[ToolSpec]) -> None:
    """Remove the nulls a strict-mode model sends for the optional arguments it does not use."""
    spec = next((tool for tool in tools if tool.name == call.name), None)
    if spec is None or not isinstance(call.input, dict):
        return
    required = set(spec.input_schema.get("required") or [])
    for name in [k for k, v in call.input.items() if v is None and k not in required]:
        del call.input[name]


def to_openai_tool(tool: ToolSpec, strict: bool = False) -> dict:
    function = {"name": tool.name, "description": tool.description,
                "parameters": openai_strict_schema(tool.input_schema) if strict else tool.input_schema}
    if strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _openai_message(message: dict) -> dict:
    role = message["role"]
    if role == "tool":
        content = message.get("content", "")
        return {"role": "tool", "tool_call_id": message["tool_call_id"],
                "content": f"ERROR: {content}" if message.get("is_error") else content}
    if role == "assistant" and message.get("tool_calls"):
        return {"role": "assistant", "content": message.get("content") or None,
                "tool_calls": [{"id": call["id"], "type": "function",
                                "function": {"name": call["name"],
                                             "arguments": json.dumps(call["input"])}}
                               for call in message["tool_calls"]]}
    return {"role": role, "content": message.get("content", "")}


def openai_request(model: str, system: str, messages: list[dict], tools: list[ToolSpec],
                   max_tokens: int, strict: bool = False, tool_choice: str | dict | None = None,
                   sampling: Mapping[str, float] | None = None) -> dict:
    chat = [{"role": "system", "content": system}] if system else []
    chat += [_openai_message(message) for message in messages]
    request: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens}
    request.update({k: v for k, v in (sampling or {}).items() if v is not None})
    if tools:
        request["tools"] = [to_openai_tool(tool, strict) for tool in tools]
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    return request


def _openai_tool_call(raw: Mapping, index: int) -> ToolCall:
    function = raw.get("function") or {}
    arguments, error = _parse_arguments(function.get("arguments"))
    name = function.get("name") or ""
    if not name and error is None:
        error = "the tool call names no tool"
    return ToolCall(id=raw.get("id") or f"call_{index}", name=name, input=arguments, error=error)


# Tool-call markup that chat templates teach models to write; a server whose tool parser is off,
# wrong for the model, or defeated by malformed JSON passes it on as text.
_TEXT_CALL_PATTERNS = (
    re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S),  # Hermes, Qwen
    re.compile(r"<function=([\w.-]+)>(.*?)(?:</function>|$)", re.S),  # Llama 3.1 / Qwen3-Coder XML
    re.compile(r"\[TOOL_CALLS\](.*)$", re.S),  # Mistral
    re.compile(r"<\|python_tag\|>(.*)$", re.S),  # Llama 3.x
    re.compile(r"<｜tool▁call▁begin｜>(.*?)(?:<｜tool▁call▁end｜>|$)", re.S),  # DeepSeek
)
TEXT_CALL_ERROR = ("this tool call arrived as plain text, not as a tool call the server parsed ({why}), "
                   "so it was not run. Call the tool again through the tool-calling interface, with "
                   "arguments that are one valid JSON object.")


def _name_in(text: str, tools: list[ToolSpec]) -> str:
    found = re.search(r'"name"\s*:\s*"([^"]+)"', text)
    if found:
        return found.group(1)
    for tool in tools:
        if re.search(rf"\b{re.escape(tool.name)}\b", text):
            return tool.name
    return ""


def text_tool_calls(text: str, tools: list[ToolSpec]) -> tuple[str, list[ToolCall]]:
    """Tool calls written as text: (the text without them, calls with `error` set)."""
    calls, rest = [], text
    for pattern in _TEXT_CALL_PATTERNS:
        for match in pattern.finditer(text):
            body = match.group(0)
            name = (match.group(1) if pattern.pattern.startswith("<function=") else _name_in(body, tools))
            why = "its markup " + _short(body.strip(), 120).replace("\n", " ")
            calls.append(ToolCall(id=f"text_call_{uuid.uuid4().hex[:12]}", name=name or "unparsed_tool_call",
                                  input={}, error=TEXT_CALL_ERROR.format(why=why)))
            rest = rest.replace(body, "")
    stripped = text.strip()
    if not calls and stripped.startswith("{") and stripped.endswith("}"):
        # a bare JSON call ({"name": ..., "arguments": ...}) naming one of the tools
        try:
            body = json.loads(stripped)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("name") in {t.name for t in tools} and (
                "arguments" in body or "parameters" in body):
            calls.append(ToolCall(id=f"text_call_{uuid.uuid4().hex[:12]}", name=body["name"], input={},
                                  error=TEXT_CALL_ERROR.format(why="a bare JSON object in the reply")))
            rest = ""
    return rest.strip(), calls


def turn_from_openai(response: Mapping, prices: Prices, tools: list[ToolSpec] | None = None) -> Turn:
    """A chat-completions response body (dict) as a Turn. With `tools` (those offered), tool
    calls written as text are recognised and optional arguments sent as null are dropped."""
    choices = response.get("choices") if isinstance(response, Mapping) else None
    if not choices:
        raise BackendResponseError(f"chat completion without choices: {_short(json.dumps(response))}")
    choice = choices[0] or {}
    message = choice.get("message") or {}
    calls = [_openai_tool_call(raw, i) for i, raw in enumerate(message.get("tool_calls") or [])]
    text = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if not isinstance(reasoning, str):
        reasoning = json.dumps(reasoning)
    if tools and not calls:
        text, calls = text_tool_calls(text, tools)
        if not calls and not text:  # everything went to the reasoning parser
            _, calls = text_tool_calls(reasoning, tools)
    for call in calls:
        drop_null_optionals(call, tools or [])
    truncated = choice.get("finish_reason") == "length"
    if truncated:
        _mark_truncated(calls)
    raw_usage = response.get("usage") or {}
    cached = int((raw_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    usage = Usage(input_tokens=int(raw_usage.get("prompt_tokens") or 0) - cached,
                  output_tokens=int(raw_usage.get("completion_tokens") or 0),
                  cache_read_tokens=cached)
    # finish_reason "stop" with tool calls (vLLM does this) still means the calls are to be run
    stop: StopReason = "max_tokens" if truncated else "tool_use" if calls else "end"
    return Turn(text=text, tool_calls=calls, stop_reason=stop, usage=usage,
                dollars=prices.dollars(usage), raw_model=str(response.get("model") or ""),
                reasoning=reasoning)


DEFAULT_OPEN_CONTEXT_WINDOW = 32_768  # when neither the config nor the server says


class OpenAICompatibleBackend(_PricedBackend):
    """Any server speaking the OpenAI chat-completions API (vLLM's included), over plain HTTP.

    `base_url` includes the API prefix, e.g. ``http://head-node:8000/v1``. `api_key_env` names
    the variable holding a bearer token; None sends no Authorization header (a local server).
    Prices: the model's entry in the table if it has one, else ``openai-compatible`` (0).
    `context_window`: the model's window in tokens; None reads ``max_model_len`` from the
    server's ``GET /models``. `strict_tools` sends strict-style schemas; `temperature` and
    `top_p` are sent when given (else the server's defaults, e.g. the model's generation config)."""

    def __init__(self, model: str, base_url: str, api_key_env: str | None = None,
                 prices: Prices | Mapping | str | Path | None = None, max_retries: int = 6,
                 timeout: float = 600.0, retry_policy: RetryPolicy | None = None,
                 estimate_bytes_per_token: float = 1.0, context_window: int | None = None,
                 strict_tools: bool = False, temperature: float | None = None,
                 top_p: float | None = None, tool_choice: str = "auto"):
        if tool_choice not in ("auto", "required"):
            raise ValueError(f"backend.tool_choice={tool_choice!r}; allowed: auto, required")
        self.model = model
        self.base_url = base_url.rstrip("/")
        # "required": every reply must call a tool (constrained decoding on vLLM): for models too
        # weak to choose between text and a call; `finish` is a tool, so it can still stop.
        self.tool_choice = tool_choice
        self.api_key_env = api_key_env
        self.prices = resolve_prices(prices, model, fallback=OPENAI_COMPATIBLE_PRICES)
        self.retry = retry_policy or RetryPolicy(max_retries=max_retries)
        self.estimate_bytes_per_token = estimate_bytes_per_token
        self.strict_tools = strict_tools
        self.sampling = {"temperature": temperature, "top_p": top_p}
        self._context_window = context_window or None
        self._secret = (read_api_key(api_key_env, f"OpenAICompatibleBackend({model})")
                        if api_key_env else None)
        self._http = httpx.Client(timeout=timeout)

    def step(self, system: str, messages: list[dict], tools: list[ToolSpec], max_tokens: int,
             tool_choice: str | dict | None = None) -> Turn:
        validate_messages(messages)
        request = openai_request(self.model, system, messages, tools, max_tokens, strict=self.strict_tools,
                                 tool_choice=tool_choice or self.tool_choice, sampling=self.sampling)
        response = self.retry.call(lambda: self._send(request), what=f"{self.base_url} {self.model}")
        return turn_from_openai(response, self.prices, tools)

    def models(self) -> list[dict]:
        """The server's ``GET /models`` entries (vLLM's carry ``max_model_len``)."""
        body = self.retry.call(lambda: self._call("GET", "/models"), what=f"{self.base_url} models")
        data = body.get("data") if isinstance(body, Mapping) else None
        return [entry for entry in data or [] if isinstance(entry, Mapping)]

    def context_window(self) -> int:
        """The configured window, else the served model's ``max_model_len``, else 32,768."""
        if self._context_window is None:
            try:
                entry = next((m for m in self.models() if m.get("id") == self.model), None)
            except BackendError as error:
                logger.warning("%s: cannot read max_model_len (%s); assuming %d tokens", self.base_url,
                               error, DEFAULT_OPEN_CONTEXT_WINDOW)
                entry = None
            window = int((entry or {}).get("max_model_len") or 0)
            self._context_window = window or DEFAULT_OPEN_CONTEXT_WINDOW
        return self._context_window

    def close(self) -> None:
        self._http.close()

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._secret is not None:
            headers["authorization"] = f"Bearer {self._secret.reveal()}"
        return headers

    def _send(self, request: dict) -> dict:
        return self._call("POST", "/chat/completions", json=request)

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One HTTP request to the server; timeouts and connection errors are transient (retried)."""
        failure: BaseException | None = None
        try:
            response = self._http.request(method, f"{self.base_url}{path}", headers=self._headers(), **kwargs)
        except httpx.TimeoutException:
            failure = TransientError("request timed out")
        except httpx.TransportError as error:
            failure = TransientError(f"connection error ({type(error).__name__})")
        if failure is not None:
            raise failure
        return self._body_or_raise(response)

    def _body_or_raise(self, response) -> dict:
        status = response.status_code
        if status >= 400:
            detail = self._redact(_error_detail(response))
            reason = _short(f"HTTP {status} {detail}".strip())
            if status in RETRYABLE_STATUS:
                raise TransientError(reason, parse_retry_after(response.headers), status)
            message = f"{self.base_url} {self.model}: {reason}"
            if status == 404:
                message += _not_found_hint(self.base_url, self.model, response)
            raise context_overflow(status, detail, message) or BackendRequestError(message, status=status)
        try:
            return response.json()
        except ValueError:
            raise BackendResponseError(
                f"{self.base_url} {self.model}: response is not JSON: "
                f"{self._redact(_short(response.text))}") from None

    def _redact(self, text: str) -> str:
        return self._secret.redact(text) if self._secret is not None else text


def _error_detail(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    if not isinstance(body, Mapping):
        return str(body)
    error = body.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error.get("type") or "")
    # vLLM's older shape: {"object": "error", "message": ...}; FastAPI's: {"detail": "Not Found"}
    return str(error or body.get("message") or body.get("detail") or body)


def _not_found_hint(base_url: str, model: str, response) -> str:
    """Why an OpenAI-compatible server answered 404, in words an operator can act on."""
    detail = _error_detail(response)
    if "does not exist" in detail or "model" in detail.lower():
        return (f" (the server does not serve the model {model!r}; set backend.model to a name its "
                f"GET {base_url}/models lists, or start it with --served-model-name {model})")
    if not base_url.rstrip("/").endswith("/v1"):
        return f" (no such route: backend.base_url usually ends with the API prefix, e.g. {base_url.rstrip('/')}/v1)"
    return ""
