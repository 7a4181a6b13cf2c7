"""A local stand-in for LLM HTTP APIs, so backend tests never reach a real service.

`StubLLMServer` is a threading `http.server` bound to 127.0.0.1 on a free port. It answers

- ``POST /v1/messages`` in the Anthropic Messages shape, and
- ``POST /v1/chat/completions`` (or ``/chat/completions``) in the OpenAI chat shape,

from a *script*: a FIFO queue of replies that a test fills before making calls, for example
"first a 529, then a 429 with ``retry-after: 0``, then a tool_use reply". Every request it
receives is recorded (path, headers, parsed JSON body) so a test can assert what the client
actually sent: cache_control placement, message conversion, auth headers, or that nothing was
sent at all.

When the script runs dry the server asks `responder` (a function of the recorded request that
returns a body or a `ScriptedReply`), if there is one, else answers 400 with an explanatory
error rather than a retryable status, so a test that scripted too few replies fails at once
instead of retrying.

Beyond the script it can behave like real servers do (vLLM's OpenAI-compatible server and the
Messages API), each behaviour a constructor argument:

- ``model``: the served model; ``GET /v1/models`` lists it (with ``max_model_len``), and a
  request for another model gets vLLM's 404 "The model `x` does not exist."; an unknown path
  gets FastAPI's bare 404 ``{"detail": "Not Found"}`` (a base_url without ``/v1``);
- ``context_window``: prompts are counted (``chars_per_token`` characters a token over the JSON
  of system, messages and tools) and one whose prompt plus max_tokens passes the window gets the
  server's 400 (vLLM: "This model's maximum context length is ..."; Messages API: "prompt is too
  long: N tokens > W maximum"); with ``shorten_max_tokens`` the server instead lowers max_tokens
  to what fits, so a long reply comes back cut (``finish_reason: "length"``, a half-written call);
- ``count_usage``: usage reports the counted prompt tokens;
- ``tool_parser=False`` (vLLM without ``--enable-auto-tool-choice``/``--tool-call-parser``):
  ``tool_choice: "auto"`` is refused with vLLM's 400, and tool calls come back as text
  (``<tool_call>{...}</tool_call>`` in the content, no ``tool_calls``);
- ``tools_in_template=False`` (a chat template with no place for tools): the model never sees
  the tools, so it answers in plain text; a named ``tool_choice`` still gets a call (vLLM forces
  it with structured outputs, whatever the template);
- ``start_delay_s``: the port is bound but not listening until then (connection refused, as
  while vLLM loads a model).

The builders (`anthropic_message`, `text_block`, `tool_use_block`, `openai_completion`,
`openai_tool_call`) make response bodies with realistic fields, usage included: finish_reason
``"stop"`` with tool calls, null usage details and a ``reasoning`` field are options.
"""

from __future__ import annotations

import copy
import json
import math
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

ANTHROPIC_PATHS = ("/v1/messages",)
OPENAI_PATHS = ("/v1/chat/completions",)
MODELS_PATHS = ("/v1/models",)
AUTO_TOOL_CHOICE_ERROR = ('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                          'to be set')


@dataclass
class ScriptedReply:
    """One reply from the script: an HTTP status with a JSON body and headers, or a dropped
    connection (``disconnect=True``: the socket closes before any response is written), with
    an optional delay first (to exercise client timeouts)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    disconnect: bool = False
    delay_s: float = 0.0


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any
    prompt_tokens: int | None = None  # as the stub counts them
    method: str = "POST"

    def carries(self, secret: str) -> bool:
        """Whether the request authenticated with `secret` (x-api-key or a bearer token)."""
        return secret in (self.headers.get("x-api-key", ""), self.headers.get("authorization", "")
                          .removeprefix("Bearer "))


class StubLLMServer:
    """Scripted Anthropic/OpenAI-shaped HTTP server; use as a context manager.

    >>> with StubLLMServer() as stub:
    ...     stub.push_error(529)
    ...     stub.push(anthropic_message([text_block("hi")]))
    ...     # point a client at stub.url (Anthropic) or stub.url + "/v1" (OpenAI-compatible)
    """

    def __init__(self, model: str | None = None, context_window: int | None = None,
                 chars_per_token: float = 4.0, shorten_max_tokens: bool = False,
                 count_usage: bool = False, tool_parser: bool = True, tools_in_template: bool = True,
                 start_delay_s: float = 0.0,
                 responder: Callable[[RecordedRequest], Any] | None = None) -> None:
        self._script: list[ScriptedReply] = []
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.model, self.context_window, self.chars_per_token = model, context_window, chars_per_token
        self.shorten_max_tokens, self.count_usage = shorten_max_tokens, count_usage
        self.tool_parser, self.tools_in_template = tool_parser, tools_in_template
        self.start_delay_s, self.responder = start_delay_s, responder
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class(), bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.allow_reuse_address = True
        self._server.server_bind()  # the port is known (and refuses connections) before it listens
        self._stopping, self._listening = threading.Event(), threading.Event()
        self._life = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        if self.start_delay_s and self._stopping.wait(self.start_delay_s):
            return
        with self._life:
            if self._stopping.is_set():
                return
            self._server.server_activate()
            self._listening.set()
        # A short poll interval makes shutdown() quick, which keeps many small tests fast.
        self._server.serve_forever(poll_interval=0.02)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "StubLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._life:
            self._stopping.set()
            listening = self._listening.is_set()
        if listening:
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "StubLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- scripting ---------------------------------------------------------------------------
    def push(self, body: Any, status: int = 200, headers: dict[str, str] | None = None,
             delay_s: float = 0.0) -> None:
        """Queue a JSON reply."""
        self._enqueue(ScriptedReply(status=status, body=body, headers=dict(headers or {}),
                                    delay_s=delay_s))

    def push_error(self, status: int, retry_after: float | None = None,
                   message: str = "scripted error") -> None:
        """Queue an error reply shaped like both APIs' error bodies, with an optional
        ``retry-after`` header (seconds)."""
        headers = {} if retry_after is None else {"retry-after": _format_seconds(retry_after)}
        body = {"type": "error", "error": {"type": _error_type(status), "message": message}}
        self._enqueue(ScriptedReply(status=status, body=body, headers=headers))

    def push_disconnect(self) -> None:
        """Queue a dropped connection: the client sees a connection error, not a status."""
        self._enqueue(ScriptedReply(disconnect=True))

    def pending(self) -> int:
        with self._lock:
            return len(self._script)

    def _enqueue(self, reply: ScriptedReply) -> None:
        with self._lock:
            self._script.append(reply)

    def _next_reply(self, request: RecordedRequest) -> ScriptedReply:
        with self._lock:
            if self._script:
                return self._script.pop(0)
        if self.responder is not None:
            reply = self.responder(request)
            return reply if isinstance(reply, ScriptedReply) else ScriptedReply(body=reply)
        return ScriptedReply(status=400, body={"type": "error", "error": {
            "type": "invalid_request_error", "message": "stub server: no scripted reply left"}})

    # -- what a real server does around the model ----------------------------------------------
    def count_tokens(self, body: Any) -> int:
        """The stub's tokenizer: characters of the prompt's JSON / chars_per_token."""
        if not isinstance(body, dict):
            return 0
        prompt = {k: body[k] for k in ("system", "messages", "tools") if k in body}
        return math.ceil(len(json.dumps(prompt, ensure_ascii=False)) / self.chars_per_token)

    def _serve_request(self, request: RecordedRequest) -> ScriptedReply:
        body = request.body if isinstance(request.body, dict) else {}
        anthropic = request.path in ANTHROPIC_PATHS
        if self.model is not None and body.get("model") != self.model:
            return ScriptedReply(status=404, body=_vllm_error(
                f"The model `{body.get('model')}` does not exist.", "NotFoundError", 404))
        tool_choice = body.get("tool_choice")
        if not anthropic and not self.tool_parser and tool_choice == "auto" and body.get("tools"):
            return ScriptedReply(status=400, body=_vllm_error(AUTO_TOOL_CHOICE_ERROR, "BadRequestError", 400))
        max_tokens = int(body.get("max_tokens") or 16)
        if self.context_window is not None:
            prompt = request.prompt_tokens
            if prompt + max_tokens > self.context_window and not (self.shorten_max_tokens and prompt < self.context_window):
                if anthropic:
                    message = (f"prompt is too long: {prompt} tokens > {self.context_window} maximum"
                               if prompt > self.context_window else
                               f"input length and `max_tokens` exceed context limit: {prompt} + {max_tokens} > "
                               f"{self.context_window}, decrease input length or `max_tokens` and try again")
                    return ScriptedReply(status=400, body={"type": "error", "error": {
                        "type": "invalid_request_error", "message": message}})
                return ScriptedReply(status=400, body=_vllm_error(
                    f"This model's maximum context length is {self.context_window} tokens. However, you "
                    f"requested {max_tokens} output tokens and your prompt contains at least {prompt + 1} "
                    f"input tokens, for a total of at least {prompt + 1 + max_tokens} tokens. Please reduce "
                    f"the length of the input prompt or the number of requested output tokens.",
                    "BadRequestError", 400))
            max_tokens = min(max_tokens, self.context_window - prompt)
        reply = self._next_reply(request)
        if reply.status != 200 or not isinstance(reply.body, dict) or anthropic:
            if anthropic and reply.status == 200 and isinstance(reply.body, dict) and self.count_usage:
                reply = copy.deepcopy(reply)
                reply.body.setdefault("usage", {}).update(input_tokens=request.prompt_tokens,
                                                          cache_read_input_tokens=0,
                                                          cache_creation_input_tokens=0)
            return reply
        reply = copy.deepcopy(reply)
        for choice in reply.body.get("choices") or []:
            self._as_the_server_would(choice.get("message") or {}, choice, tool_choice, bool(body.get("tools")))
            usage = reply.body.get("usage") or {}
            if usage.get("completion_tokens", 0) > max_tokens:  # the reply is cut at max_tokens
                _cut(choice, max_tokens)
                usage["completion_tokens"] = max_tokens
        if self.count_usage and isinstance(reply.body.get("usage"), dict):
            reply.body["usage"]["prompt_tokens"] = request.prompt_tokens
            reply.body["usage"]["total_tokens"] = request.prompt_tokens + reply.body["usage"].get("completion_tokens", 0)
        return reply

    def _as_the_server_would(self, message: dict, choice: dict, tool_choice: Any, has_tools: bool) -> None:
        named = isinstance(tool_choice, dict) or tool_choice == "required"
        calls = message.get("tool_calls")
        if not calls or named:
            return
        if not self.tools_in_template or not has_tools:  # the model never saw the tools
            message.pop("tool_calls")
            message["content"] = "I can answer that directly: ready."
            choice["finish_reason"] = "stop"
        elif not self.tool_parser:  # no parser: the markup the template taught comes back as text
            message.pop("tool_calls")
            message["content"] = (message.get("content") or "") + "".join(_as_text(c) for c in calls)
            choice["finish_reason"] = "stop"

    def models_body(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.model, "object": "model", "created": 1700000000, "owned_by": "vllm",
            "root": self.model, "parent": None, "max_model_len": self.context_window,
            "permission": [{"id": "modelperm-stub", "object": "model_permission", "allow_sampling": True}]}]}

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- HTTP --------------------------------------------------------------------------------
    def _handler_class(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out as separate writes: without this, Nagle's algorithm and
                # the client's delayed ACK hold each reply ~40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                headers = {name.lower(): value for name, value in self.headers.items()}
                stub._record(RecordedRequest(self.path, headers, None, method="GET"))
                if self.path in MODELS_PATHS and stub.model is not None:
                    self._send(ScriptedReply(body=stub.models_body()))
                else:
                    self._send(ScriptedReply(status=404, body={"detail": "Not Found"}))

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                headers = {name.lower(): value for name, value in self.headers.items()}
                request = RecordedRequest(self.path, headers, body, prompt_tokens=stub.count_tokens(body))
                stub._record(request)
                if self.path not in ANTHROPIC_PATHS + OPENAI_PATHS:
                    self._send(ScriptedReply(status=404, body={"detail": "Not Found"}))  # FastAPI's
                    return
                self._send(stub._serve_request(request))

            def _send(self, reply: ScriptedReply) -> None:
                if reply.delay_s:
                    threading.Event().wait(reply.delay_s)
                if reply.disconnect:
                    self.close_connection = True
                    self.connection.close()
                    return
                payload = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # the client gave up first (a timeout test); nothing left to answer
                    self.close_connection = True

            def log_message(self, format, *args) -> None:  # keep test output quiet
                pass

        return Handler


# -- response builders ---------------------------------------------------------------------------
def text_block(text: str) -> dict:
    return {"type": "text", "text": text}


def tool_use_block(tool_id: str, name: str, tool_input: Any) -> dict:
    """An Anthropic tool_use block; `tool_input` is normally a dict, but a test may pass a
    string to imitate a malformed or partial input."""
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


def anthropic_message(content: list[dict], stop_reason: str | None = None,
                      input_tokens: int = 10, output_tokens: int = 5,
                      cache_read_input_tokens: int = 0, cache_creation_input_tokens: int = 0,
                      model: str = "claude-sonnet-4-6") -> dict:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return {
        "id": "msg_stub", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_read_input_tokens": cache_read_input_tokens,
                  "cache_creation_input_tokens": cache_creation_input_tokens},
    }


def openai_tool_call(call_id: str, name: str, arguments: str | dict) -> dict:
    """An OpenAI tool call; `arguments` as a dict is JSON-encoded, a string is sent verbatim
    (so a test can send malformed JSON)."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def openai_completion(content: str | None = None, tool_calls: list[dict] | None = None,
                      finish_reason: str | None = None, prompt_tokens: int = 10,
                      completion_tokens: int = 5, cached_tokens: int | None = None,
                      model: str = "stub-open-model", null_details: bool = False,
                      reasoning: str | None = None, reasoning_key: str = "reasoning",
                      usage: bool = True) -> dict:
    """`null_details`: ``prompt_tokens_details: null`` (as vLLM sends); `reasoning`: a reasoning
    parser's output under `reasoning_key` (``reasoning``, or ``reasoning_content`` in older vLLM);
    `usage=False`: ``usage: null``."""
    if finish_reason is None:
        finish_reason = "tool_calls" if tool_calls else "stop"
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning is not None:
        message[reasoning_key] = reasoning
    counts: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        counts["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if null_details:
        counts["prompt_tokens_details"] = None
        counts["completion_tokens_details"] = None
    return {"id": "chatcmpl-stub", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": counts if usage else None}


def _vllm_error(message: str, kind: str, code: int) -> dict:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


def _as_text(call: dict) -> str:
    """A tool call as the Hermes/Qwen chat template teaches the model to write it."""
    arguments = call["function"].get("arguments") or "{}"
    try:
        arguments = json.loads(arguments)
    except ValueError:
        pass  # malformed arguments stay a string, as the model wrote them
    return f"<tool_call>\n{json.dumps({'name': call['function']['name'], 'arguments': arguments})}\n</tool_call>"


def _cut(choice: dict, max_tokens: int) -> None:
    """What a reply cut at max_tokens looks like: the text shortened, the last call half written."""
    message = choice.get("message") or {}
    choice["finish_reason"] = "length"
    if message.get("tool_calls"):
        last = message["tool_calls"][-1]["function"]
        last["arguments"] = (last.get("arguments") or "")[: max(1, len(last.get("arguments") or "") // 2)]
    elif message.get("content"):
        message["content"] = message["content"][: max(1, max_tokens * 4)]


def _error_type(status: int) -> str:
    return {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
            529: "overloaded_error"}.get(status, "api_error")


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)
