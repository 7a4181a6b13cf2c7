"""LLM backends, against a local stub server (no real API is ever called)."""

import json
import logging
import pickle
import time

import pytest
from stub_llm_server import (
    StubLLMServer,
    anthropic_message,
    openai_completion,
    openai_tool_call,
    text_block,
    tool_use_block,
)

from aar_ray.agents.backends import (
    AnthropicBackend,
    Backend,
    BackendRequestError,
    ContextLengthExceeded,
    MissingAPIKeyError,
    OpenAICompatibleBackend,
    Prices,
    RetriesExhausted,
    RetryPolicy,
    ToolSpec,
    Usage,
    anthropic_request,
    load_price_table,
    openai_request,
    resolve_prices,
    to_anthropic_messages,
    tool_result_message,
    turn_from_anthropic,
    turn_from_openai,
    user_message,
)
from aar_ray.agents.backends import httpx  # the anthropic SDK's HTTP client (httpx2), or httpx
from aar_ray.agents.preflight import PreflightError, preflight

SECRET = "sk-ant-test-SECRET123"
PRICES = Prices(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30)
READ_FILE = ToolSpec("read_file", "Read a file from the workspace.",
                     {"type": "object", "properties": {"path": {"type": "string"}},
                      "required": ["path"]})
RUN = ToolSpec("run_experiment", "Run an idea on the validation split.",
               {"type": "object", "properties": {"idea": {"type": "string"}}})
SYSTEM = "You are a weak-to-strong researcher."


class RecordingSleep:
    def __init__(self):
        self.waits = []

    def __call__(self, seconds):
        self.waits.append(seconds)


@pytest.fixture
def stub():
    with StubLLMServer() as server:
        yield server


@pytest.fixture
def sleep():
    return RecordingSleep()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    return SECRET


def claude(stub, sleep, max_retries=4, **kwargs):
    policy = RetryPolicy(max_retries=max_retries, base_delay_s=0.5, sleep=sleep)
    kwargs.setdefault("timeout", 5)
    return AnthropicBackend("claude-sonnet-4-6", base_url=stub.url, prices=PRICES,
                            retry_policy=policy, **kwargs)


def open_model(stub, sleep, max_retries=4, **kwargs):
    policy = RetryPolicy(max_retries=max_retries, base_delay_s=0.5, sleep=sleep)
    kwargs.setdefault("timeout", 5)
    return OpenAICompatibleBackend("qwen-open", base_url=stub.url + "/v1", retry_policy=policy,
                                   **kwargs)


def tool_conversation():
    """user asks; assistant calls two tools; both results come back; the user adds a note."""
    return [
        user_message("Find the best method."),
        {"role": "assistant", "content": "Let me look.",
         "tool_calls": [{"id": "t1", "name": "read_file", "input": {"path": "a.txt"}},
                        {"id": "t2", "name": "run_experiment", "input": {"idea": "x"}}]},
        tool_result_message("t1", "contents of a"),
        tool_result_message("t2", "crashed", is_error=True),
        user_message("Budget is half spent."),
    ]


# ---- conversion ---------------------------------------------------------------------------------
def test_neutral_to_anthropic_merges_tool_results_into_one_user_turn():
    turns = to_anthropic_messages(tool_conversation())
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "t1", "name": "read_file", "input": {"path": "a.txt"}},
        {"type": "tool_use", "id": "t2", "name": "run_experiment", "input": {"idea": "x"}}]
    results = turns[2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert results[0] == {"type": "tool_result", "tool_use_id": "t1", "content": "contents of a",
                          "is_error": False}
    assert results[1]["is_error"] is True
    assert results[2]["text"] == "Budget is half spent."


def test_empty_assistant_text_is_not_sent_as_an_empty_block():
    turns = to_anthropic_messages([user_message("go"), {"role": "assistant", "content": "",
                                   "tool_calls": [{"id": "t1", "name": "x", "input": {}}]}])
    assert [b["type"] for b in turns[1]["content"]] == ["tool_use"]


def test_anthropic_response_to_turn_and_back():
    response = anthropic_message([text_block("Reading."),
                                  tool_use_block("toolu_1", "read_file", {"path": "b.txt"})],
                                 input_tokens=100, output_tokens=20)
    turn = turn_from_anthropic(response, PRICES)
    assert turn.stop_reason == "tool_use" and turn.text == "Reading."
    assert [(c.id, c.name, c.input, c.error) for c in turn.tool_calls] == [
        ("toolu_1", "read_file", {"path": "b.txt"}, None)]
    back = to_anthropic_messages([user_message("q"), turn.to_message()])[1]["content"]
    assert back == [{"type": "text", "text": "Reading."}, {k: v for k, v in
                    response["content"][1].items()}]


def test_neutral_to_openai_and_back():
    request = openai_request("m", SYSTEM, tool_conversation(), [READ_FILE], 64)
    chat = request["messages"]
    assert chat[0] == {"role": "system", "content": SYSTEM}
    assert chat[2]["tool_calls"][0] == {"id": "t1", "type": "function", "function": {
        "name": "read_file", "arguments": json.dumps({"path": "a.txt"})}}
    assert chat[3] == {"role": "tool", "tool_call_id": "t1", "content": "contents of a"}
    assert chat[4]["content"] == "ERROR: crashed"
    assert request["tools"] == [{"type": "function", "function": {
        "name": "read_file", "description": READ_FILE.description,
        "parameters": READ_FILE.input_schema}}]
    turn = turn_from_openai(openai_completion(
        "ok", [openai_tool_call("c1", "read_file", {"path": "z"})], prompt_tokens=50,
        completion_tokens=7, cached_tokens=30), PRICES)
    assert turn.stop_reason == "tool_use"
    assert turn.tool_calls[0].input == {"path": "z"}
    assert turn.usage == Usage(input_tokens=20, output_tokens=7, cache_read_tokens=30)


# ---- round trips through the stub ---------------------------------------------------------------
def test_anthropic_tool_use_round_trip(stub, sleep, api_key):
    stub.push(anthropic_message([tool_use_block("toolu_7", "read_file", {"path": "notes.md"})]))
    stub.push(anthropic_message([text_block("Done: PGR 0.4.")]))
    backend = claude(stub, sleep)
    assert isinstance(backend, Backend)
    messages = [user_message("Start.")]
    turn = backend.step(SYSTEM, messages, [READ_FILE], max_tokens=256)
    assert turn.stop_reason == "tool_use" and turn.tool_calls[0].name == "read_file"
    messages += [turn.to_message(), tool_result_message("toolu_7", "# notes")]
    final = backend.step(SYSTEM, messages, [READ_FILE], max_tokens=256)
    assert final.stop_reason == "end" and final.text == "Done: PGR 0.4."
    second = stub.requests[1]
    assert second.path == "/v1/messages" and second.carries(SECRET)
    sent = second.body["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use" and sent[1]["content"][0]["id"] == "toolu_7"
    assert sent[2]["content"][0]["tool_use_id"] == "toolu_7"
    assert second.body["model"] == "claude-sonnet-4-6" and second.body["max_tokens"] == 256


def test_openai_compatible_tool_use_round_trip(stub, sleep):
    stub.push(openai_completion(None, [openai_tool_call("call_1", "run_experiment", {"idea": "y"})]))
    stub.push(openai_completion("finished"))
    backend = open_model(stub, sleep)
    messages = [user_message("Start.")]
    turn = backend.step(SYSTEM, messages, [RUN], max_tokens=128)
    assert turn.stop_reason == "tool_use" and turn.tool_calls[0].input == {"idea": "y"}
    assert turn.dollars == 0.0  # no price entry for this model: the openai-compatible default
    messages += [turn.to_message(), tool_result_message("call_1", "PGR 0.3")]
    assert backend.step(SYSTEM, messages, [RUN], max_tokens=128).text == "finished"
    second = stub.requests[1]
    assert second.path == "/v1/chat/completions" and "authorization" not in second.headers
    assert second.body["messages"][2]["tool_calls"][0]["id"] == "call_1"
    assert second.body["messages"][3] == {"role": "tool", "tool_call_id": "call_1",
                                          "content": "PGR 0.3"}


# ---- retries ------------------------------------------------------------------------------------
def test_anthropic_retries_529_then_429_with_retry_after_then_succeeds(stub, sleep, api_key):
    stub.push_error(529)
    stub.push_error(429, retry_after=0)
    stub.push(anthropic_message([tool_use_block("toolu_1", "read_file", {"path": "a"})]))
    turn = claude(stub, sleep).step(SYSTEM, [user_message("go")], [READ_FILE], 64)
    assert turn.tool_calls[0].input == {"path": "a"}
    assert len(stub.requests) == 3
    backoff, honoured = sleep.waits
    assert 0.25 <= backoff <= 0.5  # first retry: base 0.5 s with jitter in [0.5, 1]
    assert honoured == 0  # retry-after: 0 is obeyed exactly


@pytest.mark.parametrize("status", [500, 502, 503])
def test_openai_retries_server_errors(stub, sleep, status):
    stub.push_error(status)
    stub.push_error(status, retry_after=2)
    stub.push(openai_completion("ok"))
    assert open_model(stub, sleep).step(SYSTEM, [user_message("go")], [], 16).text == "ok"
    assert len(stub.requests) == 3 and sleep.waits[1] == 2


def test_connection_errors_are_retried(stub, sleep, api_key):
    stub.push_disconnect()
    stub.push(anthropic_message([text_block("back")]))
    assert claude(stub, sleep).step(SYSTEM, [user_message("go")], [], 16).text == "back"
    stub.push_disconnect()
    stub.push(openai_completion("back too"))
    assert open_model(stub, sleep).step(SYSTEM, [user_message("go")], [], 16).text == "back too"
    assert len(sleep.waits) == 2


def test_timeouts_are_retried(stub, sleep, api_key):
    for make in (claude, open_model):
        stub.push(openai_completion("late") if make is open_model else
                  anthropic_message([text_block("late")]), delay_s=0.6)
        stub.push(openai_completion("in time") if make is open_model else
                  anthropic_message([text_block("in time")]))
        backend = make(stub, sleep, timeout=0.2)
        assert backend.step(SYSTEM, [user_message("go")], [], 16).text == "in time"
    assert len(sleep.waits) == 2 and len(stub.requests) == 4


def test_gives_up_after_max_retries_with_a_clear_error(stub, sleep, api_key):
    for _ in range(3):
        stub.push_error(529, message="Overloaded")
    with pytest.raises(RetriesExhausted, match=r"gave up after 3 attempts.*529") as caught:
        claude(stub, sleep, max_retries=2).step(SYSTEM, [user_message("go")], [], 16)
    assert caught.value.attempts == 3 and caught.value.last_status == 529
    assert len(stub.requests) == 3 and len(sleep.waits) == 2
    assert 0.25 <= sleep.waits[0] <= 0.5 <= sleep.waits[1] <= 1.0  # the backoff doubles


def test_client_errors_are_not_retried(stub, sleep, api_key):
    stub.push_error(400, message="messages: bad shape")
    with pytest.raises(BackendRequestError, match="HTTP 400 messages: bad shape"):
        claude(stub, sleep).step(SYSTEM, [user_message("go")], [], 16)
    assert len(stub.requests) == 1 and sleep.waits == []


def test_backoff_is_exponential_and_capped():
    policy = RetryPolicy(base_delay_s=1, max_delay_s=8, rng=FixedRandom(1.0))
    assert [policy.delay_s(k, None) for k in range(6)] == [1, 2, 4, 8, 8, 8]
    assert policy.delay_s(0, 30.0) == 30.0
    assert RetryPolicy(max_retry_after_s=10).delay_s(0, 3600) == 10


class FixedRandom:
    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


# ---- usage, prices, caching ---------------------------------------------------------------------
def test_usage_to_dollars_with_the_price_table(stub, sleep, api_key):
    stub.push(anthropic_message([text_block("hi")], input_tokens=1_000, output_tokens=2_000,
                                cache_read_input_tokens=100_000,
                                cache_creation_input_tokens=10_000))
    turn = claude(stub, sleep).step(SYSTEM, [user_message("go")], [], 16)
    assert turn.usage == Usage(1_000, 2_000, 100_000, 10_000)
    expected = (1_000 * 3.0 + 2_000 * 15.0 + 100_000 * 0.30 + 10_000 * 3.75) / 1e6
    assert turn.dollars == pytest.approx(expected)
    assert turn.usage.total_tokens == 113_000


def test_price_table_file_and_lookup(api_key):
    table = load_price_table()
    for model in ("claude-opus-4-6", "claude-sonnet-4-6", "openai-compatible"):
        assert model in table
    assert table["claude-opus-4-6"].output > table["claude-opus-4-6"].input > 0
    assert table["openai-compatible"] == Prices(0, 0, 0, 0)
    assert resolve_prices(None, "claude-sonnet-4-5-20250929") == table["claude-sonnet-4-5"]
    with pytest.raises(KeyError, match="no price for model 'claude-opus-4-7'"):
        resolve_prices(None, "claude-opus-4-7")  # an unknown version is not priced as another
    with pytest.raises(KeyError):
        AnthropicBackend("claude-unknown-9")
    assert resolve_prices({"input": 1, "output": 2, "cache_write": 3, "cache_read": 4}, "x") \
        == Prices(1, 2, 3, 4)


def test_cache_control_on_tools_system_and_last_message(stub, sleep, api_key):
    stub.push(anthropic_message([text_block("ok")]))
    claude(stub, sleep).step(SYSTEM, tool_conversation(), [READ_FILE, RUN], 16)
    body = stub.requests[0].body
    ephemeral = {"type": "ephemeral"}
    assert "cache_control" not in body["tools"][0]
    assert body["tools"][-1]["cache_control"] == ephemeral
    assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": ephemeral}]
    last_blocks = body["messages"][-1]["content"]
    assert last_blocks[-1]["cache_control"] == ephemeral
    marked = [b for m in body["messages"] for b in m["content"] if "cache_control" in b]
    assert len(marked) == 1  # 3 breakpoints in all, within the API's limit of 4


def test_prompt_caching_can_be_turned_off():
    request = anthropic_request("m", SYSTEM, [user_message("x")], [READ_FILE], 8, prompt_caching=False)
    assert "cache_control" not in json.dumps(request)


# ---- truncation and malformed tool calls ---------------------------------------------------------
def test_truncated_anthropic_reply_keeps_complete_parts(stub, sleep, api_key):
    stub.push(anthropic_message([text_block("Plan: read two files."),
                                 tool_use_block("t1", "read_file", {"path": "a"}),
                                 tool_use_block("t2", "read_file", {"pa": "b"})],
                                stop_reason="max_tokens"))
    turn = claude(stub, sleep).step(SYSTEM, [user_message("go")], [READ_FILE], 32)
    assert turn.stop_reason == "max_tokens" and turn.text == "Plan: read two files."
    complete, cut = turn.tool_calls
    assert complete.error is None and complete.input == {"path": "a"}
    assert "max_tokens" in cut.error and cut.input == {}
    assert turn.error_results() == [tool_result_message("t2", cut.error, is_error=True)]


def test_truncated_text_only_reply(stub, sleep):
    stub.push(openai_completion("half a sent", finish_reason="length"))
    turn = open_model(stub, sleep).step(SYSTEM, [user_message("go")], [], 4)
    assert turn.stop_reason == "max_tokens" and turn.text == "half a sent" and turn.tool_calls == []


def test_malformed_openai_arguments_become_tool_call_errors(stub, sleep):
    stub.push(openai_completion(None, [openai_tool_call("c1", "read_file", '{"path": "a'),
                                       openai_tool_call("c2", "read_file", "[1, 2]"),
                                       openai_tool_call("c3", "read_file", {"path": "ok"})]))
    turn = open_model(stub, sleep).step(SYSTEM, [user_message("go")], [READ_FILE], 64)
    bad_json, not_object, good = turn.tool_calls
    assert "not valid JSON" in bad_json.error and bad_json.input == {}
    assert "JSON object" in not_object.error
    assert good.error is None and good.input == {"path": "ok"}
    assert [m["tool_call_id"] for m in turn.error_results()] == ["c1", "c2"]
    assert all(m["is_error"] for m in turn.error_results())


def test_malformed_anthropic_tool_input_is_a_tool_call_error(stub, sleep, api_key):
    stub.push(anthropic_message([tool_use_block("t1", "read_file", '{"path": ')]))
    turn = claude(stub, sleep).step(SYSTEM, [user_message("go")], [READ_FILE], 64)
    assert turn.stop_reason == "tool_use"
    assert "not valid JSON" in turn.tool_calls[0].error and turn.tool_calls[0].input == {}


# ---- keys and secrets ---------------------------------------------------------------------------
def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY"):
        AnthropicBackend("claude-sonnet-4-6")
    with pytest.raises(MissingAPIKeyError, match="MY_VLLM_TOKEN"):
        OpenAICompatibleBackend("m", "http://127.0.0.1:9/v1", api_key_env="MY_VLLM_TOKEN")


def test_secret_never_leaks(stub, sleep, monkeypatch, caplog):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("VLLM_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)  # the SDK and HTTP client log requests at DEBUG
    backends = [claude(stub, sleep, max_retries=1), open_model(stub, sleep, max_retries=1,
                                                              api_key_env="VLLM_TOKEN")]
    messages = []
    for backend in backends:
        # a server that echoes the key back in its error message, a retry, a give-up, a 401
        stub.push_error(529, message=f"overloaded for key {SECRET}")
        stub.push_disconnect()
        stub.push_error(401, message=f"invalid x-api-key {SECRET}")
        for _ in range(2):
            with pytest.raises(Exception) as caught:
                backend.step(SYSTEM, [user_message("go")], [], 16)
            messages += [str(caught.value), repr(caught.value)]
            assert caught.value.__cause__ is None and caught.value.__context__ is None
        messages += [repr(backend), str(backend), repr(vars(backend))]
    assert any("401" in m for m in messages) and any("gave up" in m for m in messages)
    assert stub.requests[0].carries(SECRET) and stub.requests[-1].carries(SECRET)  # keys in use
    logged = "\n".join(r.getMessage() + str(r.args) for r in caplog.records) + caplog.text
    for text in messages + [logged]:
        assert SECRET not in text


# ---- what real servers do (the stub's server behaviours) -----------------------------------------
OPTIONAL = ToolSpec("read_forum", "Newest posts.", {
    "type": "object", "properties": {"query": {"type": "string"},
                                     "limit": {"type": "integer", "minimum": 1, "maximum": 50}},
    "required": [], "additionalProperties": False})


def test_strict_schemas_tool_choice_and_sampling_are_sent(stub, sleep, api_key):
    stub.push(openai_completion(None, [openai_tool_call("c1", "read_forum", {"query": "soft", "limit": None})]))
    backend = open_model(stub, sleep, strict_tools=True, temperature=0.6, top_p=0.95)
    turn = backend.step(SYSTEM, [user_message("go")], [OPTIONAL], 64)
    body = stub.requests[-1].body
    assert body["tool_choice"] == "auto" and (body["temperature"], body["top_p"]) == (0.6, 0.95)
    function = body["tools"][0]["function"]
    assert function["strict"] is True and function["parameters"]["required"] == ["query", "limit"]
    assert function["parameters"]["properties"]["limit"]["type"] == ["integer", "null"]
    assert turn.tool_calls[0].input == {"query": "soft"}  # the null for the unused optional is dropped
    stub.push(anthropic_message([text_block("ok")]))
    claude(stub, sleep, strict_tools=True).step(SYSTEM, [user_message("go")], [OPTIONAL], 64)
    body = stub.requests[-1].body
    tool = body["tools"][0]
    assert tool["strict"] is True and "temperature" not in body
    assert "minimum" not in json.dumps(tool["input_schema"]) and "limit: minimum 1" in tool["description"]
    assert tool["input_schema"]["additionalProperties"] is False
    # the Messages API (version 2026-10-21, anthropic SDK 2.x) refuses sampling settings outright
    with pytest.raises(ValueError, match="temperature"):
        claude(stub, sleep, temperature=0.2)


def test_finish_reason_stop_with_tool_calls_and_null_usage_details(stub, sleep):
    stub.push(openai_completion(None, [openai_tool_call("c1", "read_file", {"path": "a"})], finish_reason="stop",
                                null_details=True))
    stub.push(openai_completion("fine", usage=False))
    backend = open_model(stub, sleep)
    turn = backend.step(SYSTEM, [user_message("go")], [READ_FILE], 64)
    assert turn.stop_reason == "tool_use" and turn.tool_calls[0].input == {"path": "a"}
    assert turn.usage == Usage(input_tokens=10, output_tokens=5)
    assert backend.step(SYSTEM, [user_message("go")], [READ_FILE], 64).usage == Usage()


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"\n</tool_call>',  # malformed (Hermes/Qwen)
    'Let me read it. <tool_call>{"name": "read_file", "arguments": {"path": "a.txt"}}',  # cut off
    '<function=read_file><parameter=path>a.txt</parameter></function>',
    '[TOOL_CALLS] [{"name": "read_file", "arguments": {"path": "a.txt"}}]',
    '{"name": "read_file", "arguments": {"path": "a.txt"}}',
])
def test_tool_calls_that_arrive_as_text_are_answered_with_an_error(stub, sleep, text):
    stub.push(openai_completion(text))
    turn = open_model(stub, sleep).step(SYSTEM, [user_message("go")], [READ_FILE], 64)
    (call,) = turn.tool_calls
    assert call.name == "read_file" and call.input == {} and "arrived as plain text" in call.error
    assert "<tool_call>" not in turn.text and "[TOOL_CALLS]" not in turn.text
    assert turn.error_results()[0]["is_error"] and turn.stop_reason == "tool_use"


def test_a_server_without_a_tool_parser_refuses_auto_and_sends_calls_as_text(sleep):
    with StubLLMServer(tool_parser=False) as stub:
        stub.push(openai_completion(None, [openai_tool_call("c1", "read_file", {"path": "a"})]))
        with pytest.raises(BackendRequestError, match="--enable-auto-tool-choice"):
            open_model(stub, sleep).step(SYSTEM, [user_message("go")], [READ_FILE], 64)
        request = openai_request("qwen-open", SYSTEM, [user_message("go")], [READ_FILE], 64)  # no tool_choice
        reply = httpx.post(stub.url + "/v1/chat/completions", json=request).json()
    assert "tool_calls" not in reply["choices"][0]["message"]
    turn = turn_from_openai(reply, PRICES, [READ_FILE])
    assert "<tool_call>" in reply["choices"][0]["message"]["content"] and "arrived as plain text" in turn.tool_calls[0].error


def test_tools_dropped_by_the_template_come_back_as_plain_text(sleep):
    with StubLLMServer(tools_in_template=False) as stub:
        stub.push(openai_completion(None, [openai_tool_call("c1", "read_file", {"path": "a"})]))
        turn = open_model(stub, sleep).step(SYSTEM, [user_message("go")], [READ_FILE], 64)
    assert turn.tool_calls == [] and turn.text and turn.stop_reason == "end"


def test_reasoning_is_kept_apart_from_the_text(stub, sleep):
    stub.push(openai_completion("Answer.", reasoning="First I think."))
    stub.push(openai_completion("", reasoning='<tool_call>{"name": "read_file", "arguments": {"path": "x"}}',
                                reasoning_key="reasoning_content"))
    backend = open_model(stub, sleep)
    turn = backend.step(SYSTEM, [user_message("go")], [READ_FILE], 64)
    assert (turn.text, turn.reasoning) == ("Answer.", "First I think.") and "reasoning" not in turn.to_message()
    turn = backend.step(SYSTEM, [user_message("go")], [READ_FILE], 64)  # the call went to the reasoning parser
    assert turn.tool_calls[0].name == "read_file" and turn.tool_calls[0].error


def test_a_server_that_shortens_max_tokens_returns_a_cut_call(sleep):
    with StubLLMServer(context_window=2_000, shorten_max_tokens=True) as stub:
        stub.push(openai_completion(None, [openai_tool_call("c1", "write_file", {"path": "a.py", "content": "x" * 400})],
                                    completion_tokens=900))
        turn = open_model(stub, sleep).step(SYSTEM, [user_message("go " * 2_000)], [READ_FILE], 1_500)
        assert stub.requests[0].prompt_tokens + 900 > 2_000  # the server made room for less than 900
    assert turn.stop_reason == "max_tokens" and "max_tokens" in turn.tool_calls[0].error


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_prompt_over_the_window_is_a_context_length_error(sleep, api_key, kind):
    with StubLLMServer(context_window=1_000) as stub:
        backend = open_model(stub, sleep) if kind == "openai" else claude(stub, sleep)
        with pytest.raises(ContextLengthExceeded) as caught:
            backend.step(SYSTEM, [user_message("x" * 8_000)], [], 64)
        assert len(stub.requests) == 1  # not retried
    assert caught.value.window == 1_000 and caught.value.prompt_tokens > 1_000 and caught.value.status == 400
    assert isinstance(caught.value, BackendRequestError)
    assert pickle.loads(pickle.dumps(caught.value)).window == 1_000


def test_a_wrong_model_or_path_says_what_to_fix(sleep):
    with StubLLMServer(model="Qwen/Qwen3-32B") as stub:
        with pytest.raises(BackendRequestError, match=r"does not exist.*set backend.model") as wrong_model:
            open_model(stub, sleep).step(SYSTEM, [user_message("go")], [], 16)
        with pytest.raises(BackendRequestError, match=r"404 Not Found.*ends with the API prefix"):
            OpenAICompatibleBackend("Qwen/Qwen3-32B", stub.url, retry_policy=RetryPolicy(sleep=sleep)).step(
                SYSTEM, [user_message("go")], [], 16)
    assert wrong_model.value.status == 404


def test_a_server_still_starting_refuses_connections_then_answers(sleep):
    with StubLLMServer(start_delay_s=0.8) as stub:
        stub.push(openai_completion("up"))
        with pytest.raises(httpx.ConnectError):
            httpx.get(stub.url + "/v1/models")
        backend = OpenAICompatibleBackend("qwen-open", stub.url + "/v1",
                                          retry_policy=RetryPolicy(max_retries=8, base_delay_s=0.1))
        assert backend.step(SYSTEM, [user_message("go")], [], 16).text == "up"


def test_the_context_window_comes_from_the_server_or_the_config(sleep, api_key):
    with StubLLMServer(model="qwen-open", context_window=4_096) as stub:
        assert open_model(stub, sleep).context_window() == 4_096
        assert open_model(stub, sleep, context_window=2_048).context_window() == 2_048
    with StubLLMServer() as stub:  # no /v1/models
        assert open_model(stub, sleep, max_retries=0).context_window() == 32_768
        assert claude(stub, sleep).context_window() == 200_000


# ---- pre-flight ---------------------------------------------------------------------------------
def echo_call(request):
    return openai_completion(None, [openai_tool_call("p1", "preflight_echo", {"word": "ready"})])


def vllm(stub, **overrides):
    from aar_ray.agents.researcher import BackendConfig

    return BackendConfig(**{"kind": "openai", "model": "qwen-open", "base_url": stub.url + "/v1", **overrides})


def test_preflight_passes_a_working_server_and_reads_its_window():
    with StubLLMServer(model="qwen-open", context_window=4_096, responder=echo_call) as stub:
        report = preflight(vllm(stub))
        choices = [r.body["tool_choice"] for r in stub.requests if r.method == "POST"]
    assert report["ok"] and report["context_window"] == 4_096 and report["served_models"] == ["qwen-open"]
    assert choices == [{"type": "function", "function": {"name": "preflight_echo"}}, "auto"]
    assert report["auto_tool_call"] == {"name": "preflight_echo", "input": {"word": "ready"}}


def test_preflight_waits_for_a_server_that_is_starting_and_gives_up_in_time():
    with StubLLMServer(model="qwen-open", responder=echo_call, start_delay_s=1.0) as stub:
        started = time.monotonic()
        assert preflight(vllm(stub, startup_timeout_s=30), poll_s=0.1)["ok"]
        assert 0.9 < time.monotonic() - started < 10
    with StubLLMServer(model="qwen-open", responder=echo_call, start_delay_s=30) as stub:
        with pytest.raises(PreflightError, match=r"did not come up within backend.startup_timeout_s=0.5"):
            preflight(vllm(stub, startup_timeout_s=0.5), poll_s=0.1)


@pytest.mark.parametrize("server, match", [
    (dict(tool_parser=False), r"refused .*auto.* tool choice requires"),
    (dict(tools_in_template=False), r"auto check\): the reply was plain text"),
])
def test_preflight_refuses_a_server_whose_tools_do_not_work(server, match):
    with StubLLMServer(model="qwen-open", responder=echo_call, **server) as stub:
        with pytest.raises(PreflightError, match=match) as caught:
            preflight(vllm(stub))
    for flag in ("--enable-auto-tool-choice", "--tool-call-parser", "--chat-template"):
        assert flag in str(caught.value)


def test_preflight_refuses_a_wrong_model_or_address_and_checks_keys(monkeypatch):
    with StubLLMServer(model="Qwen/Qwen3-32B", responder=echo_call) as stub:
        with pytest.raises(PreflightError, match=r"serves \['Qwen/Qwen3-32B'\], not 'qwen-open'"):
            preflight(vllm(stub))
        config = vllm(stub, model="Qwen/Qwen3-32B")
        config.base_url = stub.url
        with pytest.raises(PreflightError, match=r"404; backend.base_url usually ends with the API prefix"):
            preflight(config)
    from aar_ray.agents.researcher import BackendConfig

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(PreflightError, match="ANTHROPIC_API_KEY"):
        preflight(BackendConfig(kind="anthropic", model="claude-opus-4-6"))
    assert preflight(BackendConfig())["ok"]


def test_tool_calls_can_be_required_of_an_open_model_and_only_there(stub, sleep):
    from aar_ray.agents.researcher import BackendConfig

    stub.push(openai_completion(tool_calls=[openai_tool_call("c1", "read_file", {"path": "a.txt"})]))
    turn = open_model(stub, sleep, tool_choice="required").step("sys", [user_message("go")], [READ_FILE], 64)
    assert stub.requests[-1].body["tool_choice"] == "required" and turn.tool_calls[0].name == "read_file"
    with pytest.raises(ValueError, match=r"backend.tool_choice='always'; allowed: auto, required"):
        open_model(stub, sleep, tool_choice="always")
    with pytest.raises(PreflightError, match=r"backend.tool_choice='required' is for openai backends"):
        preflight(BackendConfig(kind="anthropic", model="claude-sonnet-4-6", tool_choice="required"))
