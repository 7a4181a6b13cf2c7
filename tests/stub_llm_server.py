"""A local stand-in for LLM HTTP APIs, so backend tests never reach a real service.

`StubLLMServer` is a threading `http.server` bound to 127.0.0.1 on a free port. It answers

- ``POST /v1/messages`` in the Anthropic Messages shape, and
- ``POST /v1/chat/completions`` (or ``/chat/completions``) in the OpenAI chat shape,

from a *script*: a FIFO queue of replies that a test fills before making calls, for example
"first a 529, then a 429 with ``retry-after: 0``, then a tool_use reply". Every request it
receives is recorded (path, headers, parsed JSON body) so a test can assert what the client
actually sent: cache_control placement, message conversion, auth headers, or that nothing was
sent at all.

When the script runs dry the server answers 400 with an explanatory error rather than a
retryable status, so a test that scripted too few replies fails at once instead of retrying.

The builders (`anthropic_message`, `text_block`, `tool_use_block`, `openai_completion`,
`openai_tool_call`) make response bodies with realistic fields, usage included.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANTHROPIC_PATHS = ("/v1/messages",)
OPENAI_PATHS = ("/v1/chat/completions", "/chat/completions")


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

    def __init__(self) -> None:
        self._script: list[ScriptedReply] = []
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval makes shutdown() quick, which keeps many small tests fast.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "StubLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
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

    def _next_reply(self) -> ScriptedReply:
        with self._lock:
            if self._script:
                return self._script.pop(0)
        return ScriptedReply(status=400, body={"type": "error", "error": {
            "type": "invalid_request_error", "message": "stub server: no scripted reply left"}})

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- HTTP --------------------------------------------------------------------------------
    def _handler_class(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                headers = {name.lower(): value for name, value in self.headers.items()}
                stub._record(RecordedRequest(self.path, headers, body))
                if self.path not in ANTHROPIC_PATHS + OPENAI_PATHS:
                    self._send(ScriptedReply(status=404, body={"error": {"message": "no route"}}))
                    return
                self._send(stub._next_reply())

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
                      model: str = "stub-open-model") -> dict:
    if finish_reason is None:
        finish_reason = "tool_calls" if tool_calls else "stop"
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return {"id": "chatcmpl-stub", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": usage}


def _error_type(status: int) -> str:
    return {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
            529: "overloaded_error"}.get(status, "api_error")


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)
