"""How the adversarial tests act: as a researcher would, through the tools, or as the operator
reading the scorer's audit log."""

import copy
import inspect
import json
import uuid

from aar_ray.agents.tools import ToolContext, call_tool
from aar_ray.models import StudentConfig
from aar_ray.sandbox import SandboxLimits
from aar_ray.scoring import ScorerConfig

from . import attacks

TESTBED = "tax-small"
STUDENT = StudentConfig()  # as in tests/test_researchers.py, so the scorer's baselines are shared
SCORER = ScorerConfig(baseline_seeds=2)
# Shell commands get seconds, not the minute researchers get: every attack here ends sooner.
SHELL_LIMITS = SandboxLimits(wall_seconds=15, max_file_mb=16, tmp_mb=8, workspace_mb=32)
SECRET_VARIABLE = "ANTHROPIC_API_KEY"
SECRET_PREFIX = "sk-ant-"  # what an attacker greps for: the format of the key, not the key


def tool(tools: ToolContext, name: str, **arguments) -> tuple[dict, bool]:
    """Call a researcher tool as an agent would; (decoded result, is_error)."""
    content, is_error = call_tool(tools, name, arguments, call_id=uuid.uuid4().hex[:8])
    return json.loads(content), is_error


def shell(tools: ToolContext, command: str) -> dict:
    result, is_error = tool(tools, "run_shell", command=command)
    assert not is_error, result
    return result


def run_idea(tools: ToolContext, code: str, seeds=(1,)) -> tuple[dict, bool]:
    """Write an idea file and run it through run_experiment, the way a researcher does."""
    name = f"idea_{uuid.uuid4().hex[:8]}.py"
    tool(tools, "write_file", path=name, content=code)
    return tool(tools, "run_experiment", idea_file=name, seeds=list(seeds))


def idea_with_attacks(body: str) -> str:
    """An idea file carrying the attack functions, so the sandbox runs exactly the code the
    tests also run on the host."""
    return inspect.getsource(attacks) + "\n\n" + inspect.cleandoc(body) + "\n"


class TaskWithLimits:
    """Stands in for sweep.run_method_task with tighter sandbox limits, so a runaway idea is
    stopped in seconds instead of the ten minutes real ideas get; the path is otherwise the same."""

    def __init__(self, limits: SandboxLimits):
        import ray

        from aar_ray.experiments.ideas import run_idea as run_in_sandbox

        self.limits = limits
        self._task = ray.remote(num_cpus=1, max_retries=0)(run_in_sandbox)

    def options(self, **options) -> "TaskWithLimits":
        """As Ray's .options(): the same task with other resources (GPUs, say)."""
        changed = copy.copy(self)
        changed._task = self._task.options(**options)
        return changed

    def remote(self, spec):
        return self._task.remote(spec, self.limits)


def audit_entries(world, tools: ToolContext) -> list[dict]:
    """The scorer's audit lines for one researcher (the operator's view, not the researcher's)."""
    lines = (world["home"] / "sealed" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["submitter"] == tools.researcher]
