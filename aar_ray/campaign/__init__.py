"""A campaign: from one config, researchers in parallel until a budget is spent, then the
generalisation check and a report.

    run_campaign(config)  ->  prepare testbeds and caches, start the scorer
                          ->  one Researcher actor per direction, all running at once
                          ->  stop at the first cap (wall clock, agent-hours, dollars, experiments)
                          ->  generalisation: top-k ideas re-run on holdout and held-out testbeds
                          ->  report (MLflow artifacts + a Markdown file)
Everything a researcher does is checkpointed, so `resume=True` with the same name continues a
campaign whose driver died, without repeating or losing an experiment. Its state lives in the
aar home (`<home>/campaigns/<name>/`, absolute), never in the driver's working directory, so a
campaign started by one Ray job is resumed by another, from any directory or node. One driver
at a time: a second one is refused before any set-up (`lock.CampaignLock`). An interrupted
driver (Ctrl-C, SIGTERM from `ray job stop`) stops its researchers, marks the MLflow runs it
left RUNNING as KILLED and raises `CampaignInterrupted`; `--resume` continues.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray
import yaml

from aar_ray import environment
from aar_ray.agents.researcher import BackendConfig, Researcher, ResearcherConfig, ResearcherLimits
from aar_ray.agents.budget import Budget
from aar_ray.agents.ledger import CampaignLedger, read_states, researcher_spend
from aar_ray.agents.preflight import preflight
from aar_ray.agents.tools import ToolContext
from aar_ray.campaign.lock import CampaignLock, CampaignRunning
from aar_ray.campaign.paths import CampaignPaths
from aar_ray.config import TrackingConfig, resolve_locations
from aar_ray.experiments.sweep import connect_ray, prepare
from aar_ray.forum import Forum, default_url
from aar_ray.errors import ConfigError
from aar_ray.models import StudentConfig, TeacherConfig, release_student_pool
from aar_ray.resources import conf_dir
from aar_ray.scoring import ScorerConfig, scorer_actor
from aar_ray.tracking import Tracker

CONF = conf_dir()
log = logging.getLogger(__name__)


class CampaignInterrupted(Exception):
    """The driver was interrupted; its state is checkpointed and `--resume` continues."""


@dataclass
class GeneralisationConfig:
    top_k: int = 3
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    flag_drop: float = 0.15  # flag when holdout PGR is this far below validation PGR
    # Re-run each idea with the teacher's labels shuffled; an idea whose holdout PGR moves less
    # than this is flagged `ignores_teacher` (reported, not disqualified: some do it on purpose).
    teacher_ablation: bool = True
    ablation_min_change: float = 0.1


@dataclass
class CampaignLimits:
    wall_seconds: float = 1800.0
    agent_hours: float | None = None  # over all researchers
    dollars: float | None = None
    gpu_hours: float | None = None  # experiment task hours x GPUs held; researchers stop once spent


@dataclass
class CampaignConfig:
    name: str = "laptop"
    home: str = ""  # the storage root; empty: $AAR_HOME, else ~/.aar (see aar_ray.home.resolve_home)
    testbed: str = "taxonomy"  # where researchers work and are scored
    heldout_testbeds: list[str] = field(default_factory=lambda: ["sentiment", "preference"])
    researchers: int = 3
    experiment_gpus: float = 0.0  # GPUs per experiment task (0: the CPU testbeds)
    directions: str = ""  # a YAML list of {name, text, candidates}; empty: conf/directions.yaml
    backend: BackendConfig = field(default_factory=BackendConfig)
    # Per-researcher models: researcher i uses researcher_backends[i % len] (empty: `backend` for
    # all), so one campaign can compare models; spend and outcomes per model are in the report.
    researcher_backends: list[BackendConfig] = field(default_factory=list)
    # Route every researcher's steps between these models by best-PGR gain per dollar (UCB1,
    # agents/routing.py); empty: no routing.
    routes: list[BackendConfig] = field(default_factory=list)
    researcher_limits: ResearcherLimits = field(default_factory=ResearcherLimits)
    limits: CampaignLimits = field(default_factory=CampaignLimits)
    generalisation: GeneralisationConfig = field(default_factory=GeneralisationConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment=""))
    forum_url: str = ""  # empty: sqlite in the aar home


def load_directions(path: str) -> list[dict]:
    directions = yaml.safe_load(Path(path or CONF / "directions.yaml").read_text())
    if not directions or not all({"name", "text"} <= set(d) for d in directions):
        raise ConfigError(f"directions={str(path)!r}: expected a YAML list of entries with name and text")
    return directions


def researcher_configs(config: CampaignConfig) -> list[ResearcherConfig]:
    """Researcher i starts from direction i: different starts keep researchers from converging."""
    directions = load_directions(config.directions)
    shares = campaign_ledger(config).shares(config.researcher_limits)
    configs = []
    for i in range(config.researchers):
        d = directions[i % len(directions)]
        configs.append(ResearcherConfig(name=f"{d['name']}-{i}", direction=d["text"], testbed=config.testbed,
                                        backend=backend_of(config, i), limits=shares[i], routes=list(config.routes),
                                        candidates=list(d.get("candidates", []))))
    return configs


def backend_of(config: CampaignConfig, i: int) -> BackendConfig:
    """Researcher i's model: its entry of researcher_backends, else the campaign's backend."""
    return config.researcher_backends[i % len(config.researcher_backends)] if config.researcher_backends \
        else config.backend


def campaign_backends(config: CampaignConfig) -> list[BackendConfig]:
    """Every distinct model the campaign's researchers use, once each."""
    distinct = []
    for backend in config.routes or [backend_of(config, i) for i in range(config.researchers)]:
        if backend not in distinct:
            distinct.append(backend)
    return distinct


def campaign_ledger(config: CampaignConfig, forum: Forum | None = None) -> CampaignLedger:
    """The campaign's budget ledger (agents/ledger.py): its caps (`limits`), each researcher's
    share of them, and its spend, read from the researchers' checkpoints and `forum`'s results."""
    return CampaignLedger(asdict(config.limits), config.researchers, CampaignPaths.of(config).researchers, forum)


def set_control(home: str, campaign: str, action: str, researcher: str | None = None) -> dict:
    """Tell a running campaign (or one researcher of it) to run, pause or stop."""
    if action not in ("run", "pause", "stop"):
        raise ValueError(f"action {action!r}; allowed: run, pause, stop")
    paths = CampaignPaths(home, campaign)
    path = paths.control
    if not paths.root.exists():
        raise FileNotFoundError(f"no campaign {campaign!r} under {paths.campaigns}")
    control = json.loads(path.read_text()) if path.exists() else {"campaign": "run", "researchers": {}}
    if researcher:
        control["researchers"][researcher] = action
    else:
        control["campaign"] = action
    path.write_text(json.dumps(control))
    return control


def campaign_status(home: str, campaign: str) -> list[dict]:
    """Each researcher's checkpointed state: steps, why it stopped (None while running), spend."""
    paths = CampaignPaths(home, campaign)
    base = paths.researchers
    if not base.exists():
        raise FileNotFoundError(f"no campaign {campaign!r} under {paths.campaigns}")
    return [{"name": name, "steps": state["steps"], "stopped": state["stopped"],
             **{k: round(v, 4) for k, v in researcher_spend(state).to_dict().items()}}
            for name, state in read_states(base).items()]


def campaign_totals(home: str, campaign: str) -> dict:
    """The campaign's spend against its caps, from its ledger: {"campaign", tokens, dollars,
    experiments, agent_hours, gpu_hours, "caps", "exhausted" (the cap reached, or None)}. The caps
    and the forum are those of the config the driver saved; before it saved one, none."""
    paths = CampaignPaths(home, campaign)
    if not paths.root.exists():
        raise FileNotFoundError(f"no campaign {campaign!r} under {paths.campaigns}")
    saved = json.loads(paths.config_json.read_text()) if paths.config_json.exists() else {}
    forum = Forum(saved.get("forum_url") or default_url(home), campaign) if saved else None
    ledger = CampaignLedger(saved.get("limits") or {}, saved.get("researchers", 0), paths.researchers, forum)
    return {"campaign": campaign, **ledger.totals()}


@ray.remote(num_cpus=0)
class ResearcherActor:
    """One researcher in its own process. It holds no labels: its tools reach the scorer, which
    answers in rounded PGR, and its ideas run as sandboxed experiment tasks."""

    def __init__(self, rc: ResearcherConfig, config: CampaignConfig, parent_run_id: str):
        home = config.home  # absolute: resolved once by the driver
        paths = CampaignPaths.of(config)
        state_dir = paths.researcher(rc.name)
        tracker = Tracker(config.tracking.uri or None, experiment_name(config), Path(home) / "tracking-spool")
        tools = ToolContext(
            researcher=rc.name, campaign=config.name, testbed=config.testbed, home=home,
            workspace=state_dir / "workspace", scorer=ray.get_actor("aar-scorer", namespace="aar"),
            forum=Forum(config.forum_url or default_url(home), config.name),
            tracker=tracker, budget=Budget(),
            # the researcher's own MLflow run, under the campaign's: its experiments and trace
            parent_run_id=tracker.researcher_run(parent_run_id, rc.name),
            student=config.student, teacher=config.teacher,
            experiment_gpus=config.experiment_gpus)
        tools.workspace.mkdir(parents=True, exist_ok=True)
        self.researcher = Researcher(rc, tools, state_dir, paths.control)

    def run(self) -> dict:
        return self.researcher.run()

    def status(self) -> dict:
        return self.researcher.status()


def experiment_name(config: CampaignConfig) -> str:
    return config.tracking.experiment or f"campaign-{config.name}"


def _campaign_run(tracker: Tracker, config: CampaignConfig, paths: CampaignPaths) -> str:
    """The campaign's MLflow parent run, created once and reused on resume."""
    marker = paths.mlflow_run_id
    if marker.exists():
        run_id = marker.read_text().strip()
        tracker.reopen_parent(run_id)  # KILLED by an interrupted driver: running again
        return run_id
    run_id = tracker.start_parent(f"campaign-{config.name}", {
        "testbed": config.testbed, "heldout": ",".join(config.heldout_testbeds),
        "researchers": config.researchers,
        "backend": ",".join(f"{b.kind}:{b.model}" if b.model else b.kind for b in campaign_backends(config))})
    paths.root.mkdir(parents=True, exist_ok=True)
    marker.write_text(run_id)
    return run_id


# A researcher whose run() failed with its actor (its process died, or its node is unreachable
# until Ray declares it dead and restarts the actor elsewhere) is asked again, with growing
# pauses, for up to this long: run() resumes from the checkpoint, so a second call is safe.
RESEARCHER_RESTART_S = 600.0
RESEARCHER_MAX_RESTARTS = 3


def run_researchers(config: CampaignConfig, parent_run_id: str, forum: Forum, progress: bool = True) -> list[dict]:
    """Start every researcher and wait until all stop or the wall-clock cap is reached."""
    from aar_ray.progress import progress as progress_bar

    actors = {rc.name: ResearcherActor.options(name=f"researcher-{config.name}-{rc.name}", namespace="aar",
                                               max_restarts=RESEARCHER_MAX_RESTARTS, get_if_exists=True)
              .remote(rc, config, parent_run_id)
              for rc in researcher_configs(config)}
    pending = {actor.run.remote(): name for name, actor in actors.items()}
    retry_at: dict[str, float] = {}  # researcher -> when to call its run() again
    failing_since: dict[str, float] = {}
    deadline = time.time() + config.limits.wall_seconds
    statuses = []
    expected = config.researchers * (config.researcher_limits.max_experiments or 0) or None
    bar = progress_bar(total=expected, desc="experiments", unit="exp", disable=not progress)
    ledger, spent_out = campaign_ledger(config, forum), None
    try:
        while (pending or retry_at) and time.time() < deadline:
            for name in [n for n, at in retry_at.items() if at <= time.monotonic()]:
                del retry_at[name]
                pending[actors[name].run.remote()] = name
            wait = min(5.0, max(0.0, deadline - time.time()))
            if pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            else:  # every researcher left is waiting to be asked again
                done = []
                time.sleep(min(1.0, wait))
            results = forum.results()
            bar.update(len(results) - bar.n)
            reached = ledger.exhausted(ledger.spent(results))  # GPU-hours are enforced here only
            if reached:
                if reached != spent_out:
                    log.warning("campaign %r: its %s cap is reached; stopping the researchers", config.name, reached)
                spent_out = reached
                set_control(config.home, config.name, "stop")  # researchers stop at their next step
            if results:
                bar.set_postfix_str(f"best PGR {max(r.pgr for r in results):.2f}")
            for ref in done:
                name = pending.pop(ref)
                try:
                    statuses.append(ray.get(ref))
                except ray.exceptions.RayActorError as err:
                    failing = time.monotonic() - failing_since.setdefault(name, time.monotonic())
                    if failing < RESEARCHER_RESTART_S:
                        log.warning("researcher %s: %s; asking it again (failing for %.0f s)", name,
                                    type(err).__name__, failing)
                        retry_at[name] = time.monotonic() + min(10.0, 1.0 + failing / 5)
                    else:
                        statuses.append(checkpointed_status(config, name, f"failed: {err}"))
                except ray.exceptions.RayError as err:
                    statuses.append(checkpointed_status(config, name, f"failed: {err}"))
    finally:  # also when interrupted: no researcher outlives its driver's loop
        bar.close()
        for actor in actors.values():
            ray.kill(actor)
    # checkpointed: resume continues them
    statuses += [checkpointed_status(config, name, "wall-clock cap") for name in [*pending.values(), *retry_at]]
    return statuses


def checkpointed_status(config: CampaignConfig, name: str, stopped: str) -> dict:
    """What a researcher's run() returns, read from its checkpoint, for one whose call failed
    or that the wall clock cut off."""
    state = read_states(CampaignPaths.of(config).researchers).get(name) or {}
    return {"name": name, "steps": state.get("steps", 0), "stopped": stopped,
            "agent_seconds": round(state.get("agent_seconds", 0.0), 2), "spent": researcher_spend(state).to_dict()}


def run_campaign(config: CampaignConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run (or with `resume`, continue) a campaign; see the module docstring. Raises
    CampaignRunning, before any set-up, while another driver runs the same campaign."""
    config = copy.deepcopy(config)
    resolve_locations(config)  # absolute home and stores, whoever built the config
    paths = CampaignPaths.of(config)
    existed = paths.root.exists()
    started = time.time()
    with CampaignLock(paths, config.name):
        if existed and not resume:
            raise FileExistsError(f"campaign {config.name!r} exists under {paths.root}; pass --resume to continue "
                                  "it or choose another name")
        state: dict = {}
        try:
            return _run_locked(config, paths, started, state, progress)
        except KeyboardInterrupt:
            raise CampaignInterrupted(_interrupted(config, state, started)) from None


def _run_locked(config: CampaignConfig, paths: CampaignPaths, started: float, state: dict, progress: bool) -> dict:
    from aar_ray.campaign.generalisation import generalisation_check
    from aar_ray.campaign.report import write_report
    from aar_ray.config import BaselineConfig

    # An open-model server that is down, serves another model or drops tools fails here, in
    # seconds to minutes, not as researchers that write text until max_steps.
    for backend in campaign_backends(config):
        preflight(backend)
    connect_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    if config.experiment_gpus > gpus and not environment.ray_address():
        raise ConfigError(f"experiment_gpus={config.experiment_gpus} but this machine's Ray has {gpus:g} GPUs; "
                         "experiments would wait forever (use 0 on CPU, or run on a GPU cluster)")
    scorer = scorer_actor(config.home, config.scorer, config.teacher, config.student)
    testbeds = [config.testbed, *config.heldout_testbeds]
    prepare(BaselineConfig(home=config.home, testbeds=testbeds, seeds=sorted(set(config.generalisation.seeds) | {1, 2, 3, 4, 5}),
                           student=config.student, teacher=config.teacher, scorer=config.scorer), scorer, progress)
    tracker = state["tracker"] = Tracker(config.tracking.uri, experiment_name(config), Path(config.home) / "tracking-spool")
    parent = state["parent"] = _campaign_run(tracker, config, paths)
    paths.config_json.write_text(json.dumps(asdict(config), indent=2))
    forum = Forum(config.forum_url or default_url(config.home), config.name)
    statuses = run_researchers(config, parent, forum, progress)
    table = generalisation_check(config, forum, tracker, parent)
    audit_top_ideas(config, forum, table)
    release_student_pool(config.student)  # the shared inference pool's GPUs go back to the cluster
    tracker.flush_spool()  # records spooled while the tracking server was away
    spent = campaign_ledger(config, forum).spent()
    report = write_report(config, forum, tracker, parent, statuses, table, time.time() - started, spent)
    return {"researchers": statuses, "generalisation": table, "report": str(report)}


def audit_top_ideas(config: CampaignConfig, forum: Forum, table: list[dict]) -> list[dict]:
    """The audit (campaign/audit.py) of the ideas the generalisation check re-ran, written to
    the campaign's folder; the reviewer is the researchers' own model when they use one."""
    from aar_ray.agents.researcher import make_backend
    from aar_ray.campaign.audit import audit
    from aar_ray.campaign.generalisation import ranked_ideas

    # the first researcher's model: an LLM reviewer costs one call per idea checked
    first = researcher_configs(config)[0]
    reviewer = None if first.backend.kind == "search" and not first.routes else make_backend(first)
    records = audit(table, [e.result for e in ranked_ideas(forum, config.testbed, config.home)], forum,
                    config.testbed, config.generalisation.flag_drop, reviewer)
    CampaignPaths.of(config).audit_json.write_text(json.dumps(records, indent=2))
    return records


def _interrupted(config: CampaignConfig, state: dict, started: float) -> str:
    """After Ctrl-C: researchers are already stopped (run_researchers); give the inference pool
    back and end the MLflow runs this driver left RUNNING. Returns the line to show."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # a second Ctrl-C must not cut this short
    try:
        killed = 0
        with _quietly("release the inference pool"):
            release_student_pool(config.student)
        tracker = state.get("tracker")
        if tracker is not None:
            with _quietly("mark MLflow runs KILLED"):
                killed = tracker.mark_killed(started, [state["parent"]] if state.get("parent") else [])
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return (f"campaign {config.name!r} interrupted; {killed} MLflow run(s) left running marked KILLED; "
            f"continue with the same command and --resume")


@contextlib.contextmanager
def _quietly(what: str):
    try:
        yield
    except Exception as err:  # cleanup after an interrupt is best effort
        log.warning("after the interrupt, could not %s: %s", what, err)
