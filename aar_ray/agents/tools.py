"""The tools a researcher works with, as JSON-schema'd functions returning JSON text.

Every tool answers with a JSON object; a mistake the agent can fix comes back as
`{"error": "..."}` with `is_error` set, never as an exception that ends the researcher. Nothing
here returns a sealed label: experiments go through the scorer, which answers in rounded PGR.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from aar_ray.agents.backends import ToolSpec
from aar_ray.agents.budget import Budget, BudgetExceeded
from aar_ray.agents.checkpoint import NOTES_FILE
from aar_ray.experiments import SCORER_TIMEOUT_S, ExperimentSpec, record_experiment
from aar_ray.methods import METHODS, MethodSpecError, parse_method
from aar_ray.models import StudentConfig, TeacherConfig
from aar_ray.sandbox import MIB, Sandbox, SandboxLimits, workspace_usage
from aar_ray.sandbox.quota import WorkspaceUsage
from aar_ray.testbeds import load_public, testbed_meta

if TYPE_CHECKING:  # for the annotations only: no import cost, no cycle
    from ray.actor import ActorHandle

    from aar_ray.forum import Forum
    from aar_ray.tracking import Tracker

log = logging.getLogger(__name__)

TASK = """\
Weak-to-strong supervision on testbed {testbed!r} ({format} rows). A weak teacher (bag-of-words,
trained on a labelled split you never see) labelled train_unlabel and test; a strong student
(frozen pretrained sentence encoder + trainable head) should learn from those labels and beat the
teacher. Score: PGR = (transfer_acc - weak_acc) / (strong_acc - weak_acc) on part of the test split.

Write an idea file (Python) in your workspace with

    def run(ctx):  # returns P(True) (binary) or P(A) (comparison) for every row of ctx.eval_split
        ...

ctx.public: dict split -> pandas DataFrame, splits train_unlabel and test (no labels);
ctx.eval_split is "test"; ctx.weak_targets(): teacher P on train_unlabel; ctx.weak.probs[split];
ctx.new_student() -> student with fit(split, targets, loss="soft"|"hard"|fn(logits, targets,
progress), weights=None, rows=None), predict_proba(split, rows=None), zero_shot_scores(split);
ctx.params, ctx.seed, ctx.log(key, value). Print to stderr, not stdout (stdout carries the result).
Library methods you can run or read for reference: {methods}.
Run it with run_experiment (idea_file, seeds). Ideas run in a sandbox without network.
Feedback is a leaderboard, not a measurement: each seed is one query of the campaign's shared
budget, and its answer says only whether it beat the campaign's best by more than {step}
(then the new best, rounded to {step}) or not (then the best so far).
"""


@dataclass
class ToolContext:
    """What the tools of one researcher share."""

    researcher: str
    campaign: str
    testbed: str
    home: str
    workspace: Path
    scorer: ActorHandle  # of aar_ray.scoring.scorer's Scorer actor (methods called as .remote)
    forum: Forum
    tracker: Tracker
    budget: Budget
    parent_run_id: str | None = None
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    max_seeds: int = 5
    experiment_gpus: float = 0.0  # GPUs each experiment task holds
    shell_limits: SandboxLimits = field(default_factory=lambda: SandboxLimits(wall_seconds=60, cpus=1))
    finished: str | None = None


class ToolError(ValueError):
    """A mistake the agent can correct; its message goes back as the tool result."""


def _obj(**properties) -> dict:
    required = [k for k, v in properties.items() if not v.pop("optional", False)]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


SPECS = [
    ToolSpec("describe_task", "The task, the run(ctx) API and your budget.", _obj()),
    ToolSpec("sample_data", "A few public rows of a split (no labels) and counts.",
             _obj(split={"type": "string", "enum": ["train_unlabel", "test"]},
                  n={"type": "integer", "minimum": 1, "maximum": 50})),
    ToolSpec("read_file", "Read a file of your workspace.", _obj(path={"type": "string"})),
    ToolSpec("write_file", "Write a file in your workspace.",
             _obj(path={"type": "string"}, content={"type": "string"})),
    ToolSpec("run_shell", "Run a shell command in your sandboxed workspace (no network, 60 s).",
             _obj(command={"type": "string"})),
    ToolSpec("run_experiment", "Run an idea file (or a library method spec) for some seeds; "
             "returns validation PGR per seed and the MLflow run ids.",
             _obj(idea_file={"type": "string", "optional": True},
                  method={"type": "string", "optional": True},
                  seeds={"type": "array", "items": {"type": "integer"}, "minItems": 1})),
    ToolSpec("leaderboard", "The campaign's best scored results so far.", _obj()),
    ToolSpec("post", "Post a finding to the forum every researcher reads.",
             _obj(title={"type": "string"}, body={"type": "string"},
                  run_ids={"type": "array", "items": {"type": "string"}, "optional": True},
                  code_refs={"type": "array", "items": {"type": "integer"}, "optional": True})),
    ToolSpec("read_forum", "Newest forum posts, optionally matching a query.",
             _obj(query={"type": "string", "optional": True},
                  limit={"type": "integer", "minimum": 1, "maximum": 50, "optional": True})),
    ToolSpec("share_code", "Share an idea file so others can read it; returns its code id.",
             _obj(idea_file={"type": "string"})),
    ToolSpec("read_shared_code", "Read code another researcher shared.", _obj(code_id={"type": "integer"})),
    ToolSpec("finish", "Stop researching, with a summary of what you found.", _obj(summary={"type": "string"})),
    ToolSpec("update_notes", "Replace your notes (notes.md in your workspace). They are shown to you in every "
             "turn, also after older turns are summarised to keep your context small: keep in them what you "
             "tried, what worked (with run ids and feedback), what failed and what to try next. At most "
             "6,000 characters.", _obj(content={"type": "string"})),
]


def _workspace_file(ctx: ToolContext, path: str) -> Path:
    full = (ctx.workspace / path).resolve()
    if not full.is_relative_to(ctx.workspace.resolve()):
        raise ToolError(f"{path!r} is outside your workspace")
    return full


def describe_task(ctx: ToolContext) -> dict:
    meta = testbed_meta(ctx.testbed, ctx.home)
    import ray

    step = ray.get(ctx.scorer.ladder_step.remote(ctx.testbed), timeout=SCORER_TIMEOUT_S)
    return {"task": TASK.format(testbed=ctx.testbed, format=meta["format"], methods=", ".join(METHODS),
                                step=step),
            "rows": meta["rows"], "budget": ctx.budget.to_dict()}


def sample_data(ctx: ToolContext, split: str, n: int) -> dict:
    frame = load_public(ctx.testbed, ctx.home)[split]
    rows = frame.sample(min(n, len(frame)), random_state=0).to_dict("records")
    return {"split": split, "rows_in_split": len(frame), "columns": list(frame.columns),
            "sample": json.loads(json.dumps(rows, default=str))}


READ_LIMIT = 20000  # characters a read_file answer holds
CODE_LIMIT = 200_000  # characters of an idea file run_experiment and share_code take


def _open_regular(ctx: ToolContext, path: str, flags: int) -> int:
    """A descriptor of a regular file of the workspace. Opened without following a symlink and
    without waiting on a FIFO, then checked (fstat): a link, FIFO or device that sandboxed code
    left there is refused rather than followed, waited on or drained."""
    try:
        fd = os.open(_workspace_file(ctx, path), flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as err:
        if err.errno in (errno.ENXIO, errno.ELOOP):  # a FIFO nobody reads, a symlink
            raise ToolError(f"{path!r} is not a regular file") from None
        raise ToolError(f"cannot open {path!r} in your workspace ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ToolError(f"{path!r} is not a regular file")
    return fd


def read_text(ctx: ToolContext, path: str, limit: int) -> tuple[str, bool]:
    """(the first `limit` characters of a workspace file, whether there was more), reading no
    more than that from disk."""
    with os.fdopen(_open_regular(ctx, path, os.O_RDONLY), "rb") as f:
        data = f.read(limit * 4 + 1)  # UTF-8 is at most 4 bytes a character
    text = data.decode("utf-8", errors="replace")
    return text[:limit], len(text) > limit


def read_file(ctx: ToolContext, path: str) -> dict:
    text, more = read_text(ctx, path, READ_LIMIT)
    return {"path": path, "content": text, **({"truncated_at": READ_LIMIT} if more else {})}


def read_code(ctx: ToolContext, path: str) -> str:
    code, more = read_text(ctx, path, CODE_LIMIT)
    if more:
        raise ToolError(f"{path} is longer than {CODE_LIMIT} characters; split it or trim it")
    return code


def write_file(ctx: ToolContext, path: str, content: str) -> dict:
    full = _workspace_file(ctx, path)
    data = content.encode()
    limits = ctx.shell_limits
    if limits.workspace_mb is not None or limits.workspace_files is not None:
        # The quotas the shell's commands are held to; an overwrite frees what the file held.
        used = workspace_usage(ctx.workspace)
        replaced = max(full.lstat().st_blocks * 512, full.lstat().st_size) if full.is_file() else 0
        after = WorkspaceUsage(used.bytes - replaced + len(data), used.entries + (not full.exists()))
        if after.over(limits):
            raise ToolError(f"writing {path} would put your workspace at {after.bytes / MIB:.0f} MiB and "
                            f"{after.entries} files, over its quota of {limits.workspace_mb} MiB or "
                            f"{limits.workspace_files} files; delete files first")
    full.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(_open_regular(ctx, path, os.O_WRONLY | os.O_CREAT), "wb") as f:
        f.truncate(0)
        f.write(data)
    return {"path": path, "bytes": len(data)}


def run_shell(ctx: ToolContext, command: str) -> dict:
    from aar_ray.experiments.ideas import LABEL_DECIDING, PACKAGE

    home = Path(ctx.home)
    sandbox = Sandbox(ctx.workspace, readonly=[PACKAGE, home / "testbeds" / ctx.testbed],
                      limits=ctx.shell_limits, hidden=LABEL_DECIDING)
    result = sandbox.run(["/bin/sh", "-c", command], env={"PYTHONPATH": str(PACKAGE.parent)})
    return {"exit_code": result.returncode, "timed_out": result.timed_out,
            "stdout": result.stdout[-8000:], "stderr": result.stderr[-4000:]}


def run_experiment(ctx: ToolContext, seeds: list[int], idea_file: str | None = None,
                   method: str | None = None, call_id: str = "") -> dict:
    """One experiment = one idea or method over some seeds. Recorded under a call key so a
    researcher that restarts gets the recorded result instead of running it again."""
    from aar_ray.experiments.sweep import finish, submit_experiment

    key = f"{ctx.campaign}/{ctx.researcher}/{call_id}"
    done = ctx.forum.result_for(key)
    if done is not None:
        return {"seeds": list(done.seeds), "run_ids": list(done.run_ids),
                "note": "already run before a restart; its feedback was given then"}
    if (idea_file is None) == (method is None):
        raise ToolError("give exactly one of idea_file (your code) or method (a library method spec)")
    if len(seeds) > ctx.max_seeds or len(set(seeds)) != len(seeds):
        raise ToolError(f"give 1 to {ctx.max_seeds} distinct seeds")
    spec = _experiment_spec(ctx, idea_file, method)
    ctx.budget.check(experiments=1)
    specs = [replace(spec, seed=int(s), num_gpus=ctx.experiment_gpus) for s in seeds]
    refs = [submit_experiment(s) for s in specs]
    per_seed, feedback, transfer, run_ids, errors, gpu_seconds, flags = [], [], [], [], [], 0.0, set()
    for s, ref in zip(specs, refs):
        seed_key = f"{key}/seed{s.seed}"  # scorer and MLflow dedupe on it across a restart
        result, score, error = finish(ref, ctx.scorer, ctx.researcher, s, key=seed_key, analyst=ctx.campaign)
        run_ids.append(record_experiment(ctx.tracker, s, result, score, ctx.researcher, error,
                                         ctx.parent_run_id, key=seed_key))
        per_seed.append(score.get("pgr"))  # the record, for the forum and MLflow: never shown
        feedback.append(score.get("feedback"))  # what the researcher may see of this seed
        transfer += [score["transfer_acc"]] if "transfer_acc" in score else []
        flags |= set(score.get("flags", []))  # the scorer's hack checks, shown on the leaderboard
        gpu_seconds += result.wall_seconds * s.num_gpus if result is not None else 0.0
        errors += [f"seed {s.seed}: {error}"] if error else []
    ctx.budget.charge(experiments=1)
    scored = [p for p in per_seed if p is not None]
    if not scored:
        raise ToolError("every seed failed:\n" + "\n".join(errors)[-4000:])
    mean = round(float(np.mean(scored)), 3)
    found = idea_novelty(ctx, spec, run_ids)  # against what the campaign held before this idea
    code_ref = ctx.forum.share_code(ctx.researcher, spec.method, spec.code) if spec.code else None
    raised = [f["pgr"] for f in feedback if f and f.get("improved")]
    ctx.forum.record_result(ctx.researcher, ctx.testbed, spec.name,
                            key, seeds, mean, float(np.mean(transfer)), run_ids, code_ref,
                            flags=",".join(sorted(flags)), gpu_seconds=gpu_seconds,
                            shown_pgr=max(raised) if raised else None, kind=spec.kind)
    return {"idea": spec.label, "feedback_per_seed": dict(zip(map(str, seeds), feedback)),
            "run_ids": run_ids, "errors": errors, "code_ref": code_ref, "novelty": found}


NOVELTY_AUTHOR = "novelty-check"


def idea_novelty(ctx: ToolContext, spec: ExperimentSpec, run_ids: list[str]) -> dict | None:
    """The idea's novelty against the campaign's earlier ideas, posts and shared code (see
    agents/novelty.py), also recorded on its MLflow runs; None when it cannot be computed."""
    from aar_ray.agents.novelty import earlier_items, novelty

    label = spec.label
    try:
        found = novelty(ctx.researcher, spec.name, spec.code, earlier_items(ctx.forum, ctx.testbed))
    except Exception:  # noqa: BLE001 - a missing encoder must not cost the researcher the experiment
        log.warning("novelty of %s could not be computed", label, exc_info=True)
        return None
    nearest = found["nearest"][0] if found["nearest"] else None
    ctx.tracker.annotate(run_ids, {"novelty": found["novelty"]}, {
        "nearest_earlier": f"{nearest['kind']} {nearest['title']} ({nearest['author']})" if nearest else "",
        **({"near_duplicate_of": found["near_duplicate_of"]} if found["near_duplicate_of"] else {})})
    if found["near_duplicate_of"]:  # marked where every researcher reads, not refused
        ctx.forum.post(NOVELTY_AUTHOR, f"Near-duplicate: {label} ({ctx.researcher})",
                       f"{label} by {ctx.researcher} is {1 - found['novelty']:.2f} similar to the earlier "
                       f"{found['near_duplicate_of']}.", run_ids)
    return found


def _experiment_spec(ctx: ToolContext, idea_file: str | None, method: str | None) -> ExperimentSpec:
    if method is not None:
        try:
            name, params = parse_method(method)
        except MethodSpecError as err:
            raise ToolError(str(err)) from None
        return ExperimentSpec(ctx.testbed, name, 0, ctx.home, params, ctx.student, ctx.teacher)
    code = read_code(ctx, idea_file)
    if "def run(" not in code:
        raise ToolError(f"{idea_file} has no `def run(ctx)`")
    return ExperimentSpec(ctx.testbed, Path(idea_file).stem, 0, ctx.home, {}, ctx.student, ctx.teacher, code=code)


def leaderboard(ctx: ToolContext) -> dict:
    """The campaign's Ladder, as its researchers were shown it: each result that raised the
    campaign's best, with the value the scorer released then. Nothing here is new information:
    every entry was already some researcher's feedback (the campaign is one analyst)."""
    rows = [r for r in ctx.forum.results(testbed=ctx.testbed) if r.shown_pgr is not None and not r.disqualified]
    rows.sort(key=lambda r: -r.shown_pgr)
    keys = ("researcher", "testbed", "idea", "seeds", "code_ref", "flags")
    shown = [(r.display(), r.shown_pgr) for r in rows[:20]]
    return {"leaderboard": [{**{k: row[k] for k in keys}, "pgr": pgr} for row, pgr in shown]}


def post(ctx: ToolContext, title: str, body: str, run_ids: list[str] = (), code_refs: list[int] = ()) -> dict:
    return {"post_id": ctx.forum.post(ctx.researcher, title, body, run_ids, code_refs)}


def read_forum(ctx: ToolContext, query: str | None = None, limit: int = 10) -> dict:
    posts = ctx.forum.read_posts(limit, query)
    return {"posts": [{k: p[k] for k in ("id", "author", "title", "body", "run_ids", "code_refs")} for p in posts]}


def share_code(ctx: ToolContext, idea_file: str) -> dict:
    return {"code_id": ctx.forum.share_code(ctx.researcher, idea_file, read_code(ctx, idea_file))}


def read_shared_code(ctx: ToolContext, code_id: int) -> dict:
    found = ctx.forum.read_code(code_id)
    if found is None:
        raise ToolError(f"no shared code with id {code_id}")
    return {"code_id": code_id, "author": found["author"], "name": found["name"], "code": found["code"]}


def finish(ctx: ToolContext, summary: str) -> dict:
    ctx.finished = summary
    return {"finished": True}


NOTES_LIMIT = 6000  # characters of notes; the researcher shows them in every turn


def update_notes(ctx: ToolContext, content: str) -> dict:
    if len(content) > NOTES_LIMIT:
        raise ToolError(f"notes of {len(content):,} characters; keep them under {NOTES_LIMIT:,}: condense "
                        f"what is settled, drop what no longer matters")
    return {**write_file(ctx, NOTES_FILE, content), "chars": len(content)}


TOOLS: dict[str, Callable] = {f.__name__: f for f in (
    describe_task, sample_data, read_file, write_file, run_shell, run_experiment, leaderboard,
    post, read_forum, share_code, read_shared_code, finish, update_notes)}


# The `code` of an error result, for agents (and the search researcher) that act on the kind of
# error rather than its wording.
UNKNOWN_TOOL, BAD_ARGUMENTS, BUDGET_EXHAUSTED, TOOL_ERROR = "unknown_tool", "bad_arguments", "budget_exhausted", "tool_error"


def tool_error(code: str, message: str) -> tuple[str, bool]:
    return json.dumps({"error": message, "code": code}), True


def call_tool(ctx: ToolContext, name: str, arguments: dict, call_id: str) -> tuple[str, bool]:
    """(JSON result, is_error). Unknown tools, bad arguments, exhausted budgets and ToolErrors go
    back to the agent as {"error": message, "code": one of the codes above}."""
    if name not in TOOLS:
        return tool_error(UNKNOWN_TOOL, f"unknown tool {name!r}; tools: {', '.join(TOOLS)}")
    spec = next(s for s in SPECS if s.name == name)
    allowed = set(spec.input_schema["properties"])
    unknown = set(arguments) - allowed
    missing = set(spec.input_schema["required"]) - set(arguments)
    if unknown or missing:
        return tool_error(BAD_ARGUMENTS, f"{name}: unknown arguments {sorted(unknown)}, missing {sorted(missing)}; "
                                         f"arguments are {sorted(allowed)}")
    started = time.time()
    try:
        extra = {"call_id": call_id} if name == "run_experiment" else {}
        result = TOOLS[name](ctx, **arguments, **extra)
        return json.dumps({**result, "seconds": round(time.time() - started, 2)}, default=str), False
    except BudgetExceeded as err:
        return tool_error(BUDGET_EXHAUSTED, str(err))
    except ToolError as err:
        return tool_error(TOOL_ERROR, str(err))
