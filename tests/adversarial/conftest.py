"""A small world to attack: the `tax-small` testbed, the scorer actor on a local Ray, a forum, an
MLflow store and researcher tools, with an API key planted where a careless system would leak it.

The world is module-scoped (one Ray and one scorer per module) to keep the suite fast; each test
gets a researcher of its own, so budgets and probe counts do not carry over between tests.
"""

import uuid
from pathlib import Path

import pytest

from aar_ray.agents.budget import Budget
from aar_ray.agents.tools import ToolContext
from aar_ray.forum import Forum
from aar_ray.sandbox import SandboxLimits
from aar_ray.tracking import Tracker

from .helpers import SCORER, SECRET_PREFIX, SECRET_VARIABLE, SHELL_LIMITS, STUDENT, TESTBED, TaskWithLimits


@pytest.fixture(scope="module")
def secret_home(tmp_path_factory):
    """A home whose `tax-small` is drawn, like every embedded testbed, from the home's own secret
    (the shared `small_home` fixture uses the generator's public default seed, which a replay
    attack would simply try)."""
    from conftest import SMALL, write_jsonl_folder

    from aar_ray.testbeds import generator_seed, import_testbed
    from aar_ray.testbeds.embedded import generate

    home = tmp_path_factory.mktemp("secret-home")
    rows = generate("taxonomy", seed=generator_seed(home), sizes=SMALL)
    import_testbed(write_jsonl_folder(home.parent / f"{home.name}-src", rows), TESTBED, home)
    return home


@pytest.fixture(scope="module")
def world(secret_home, tmp_path_factory):
    """Ray (its processes inherit an API key, as they would on a real head node), the scorer
    actor, the testbed prepared, and one MLflow store and forum for every researcher."""
    import ray

    small_home = secret_home
    from aar_ray.config import BaselineConfig
    from aar_ray.experiments.sweep import prepare
    from aar_ray.scoring import scorer_actor

    secret = f"{SECRET_PREFIX}canary-{uuid.uuid4().hex}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_VARIABLE, secret)
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="aar",
                 logging_level="ERROR", log_to_driver=False)
        try:
            scorer = scorer_actor(small_home, SCORER, student=STUDENT)
            config = BaselineConfig(home=str(small_home), testbeds=[TESTBED], seeds=[1], student=STUDENT)
            config.scorer = SCORER
            prepare(config, scorer, progress=False)
            store = tmp_path_factory.mktemp("adversarial")
            yield {"scorer": scorer, "home": Path(small_home), "secret": secret, "store": store,
                   "gcs_address": ray.get_runtime_context().gcs_address,
                   "tracker": Tracker(f"sqlite:///{store / 'mlflow.db'}", "adversarial"),
                   "forum_url": f"sqlite:///{store / 'forum.db'}"}
        finally:
            ray.shutdown()


def make_researcher(world, label: str) -> ToolContext:
    """The tools of a new researcher, in a workspace of its own."""
    name = f"adv-{label[:40]}-{uuid.uuid4().hex[:6]}"
    return ToolContext(researcher=name, campaign="adversarial", testbed=TESTBED, home=str(world["home"]),
                       workspace=world["store"] / name, scorer=world["scorer"],
                       forum=Forum(world["forum_url"], "adversarial"), tracker=world["tracker"],
                       budget=Budget(), student=STUDENT, shell_limits=SHELL_LIMITS)


@pytest.fixture()
def researcher(world, request):
    return make_researcher(world, request.node.name)


@pytest.fixture()
def idea_limits(monkeypatch):
    """Call with SandboxLimits to run this test's ideas under them."""
    from aar_ray.experiments import sweep

    def use(limits: SandboxLimits) -> None:
        monkeypatch.setattr(sweep, "run_method_task", TaskWithLimits(limits))

    return use
