"""The teacher-ablation control: re-run an idea with the teacher's labels shuffled across rows.
A method that learns from the teacher collapses; one that ignores it does not move and is flagged
`ignores_teacher` on the forum leaderboard and on its MLflow runs (reported, not disqualified)."""

import mlflow
import numpy as np
import pytest

from aar_ray.campaign import CampaignConfig, GeneralisationConfig
from aar_ray.campaign.generalisation import generalisation_check
from aar_ray.config import BaselineConfig
from aar_ray.experiments import ExperimentSpec, experiment_params
from aar_ray.experiments.sweep import prepare
from aar_ray.forum import Forum
from aar_ray.models.artifacts import WeakLabels
from aar_ray.scoring import ScorerConfig, scorer_actor
from aar_ray.tracking import Tracker

pytestmark = pytest.mark.slow


def test_shuffled_weak_labels_keep_each_splits_share_but_not_its_rows():
    rng = np.random.default_rng(0)
    weak = WeakLabels({"train_unlabel": rng.random(500), "test": rng.random(200)}, {"kind": "bow"}, 1)
    shuffled = weak.shuffled(seed=1)
    for split, probs in weak.probs.items():
        np.testing.assert_array_equal(np.sort(shuffled.probs[split]), np.sort(probs))
        assert np.corrcoef(shuffled.probs[split], probs)[0, 1] < 0.3
    assert shuffled.teacher["shuffled"] is True and "shuffled" not in weak.teacher


def test_the_ablation_is_visible_in_the_runs_params_and_name(small_home):
    spec = ExperimentSpec("pref-small", "vanilla_w2s", 1, str(small_home), shuffle_teacher=True)
    assert experiment_params(spec)["shuffle_teacher"] is True
    assert spec.run_name.endswith("[shuffled teacher]")


@pytest.fixture()
def campaign(small_home, tmp_path, local_ray):
    config = CampaignConfig(home=str(small_home), testbed="pref-small", heldout_testbeds=[],
                            scorer=ScorerConfig(baseline_seeds=2),
                            generalisation=GeneralisationConfig(top_k=2, seeds=[1, 2]))
    scorer = scorer_actor(config.home, config.scorer, config.teacher, config.student)
    prepare(BaselineConfig(home=config.home, testbeds=["pref-small"], seeds=[1, 2], scorer=config.scorer),
            scorer, progress=False)
    forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "ablation")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "ablation", tmp_path / "spool")
    return config, forum, tracker


def _researcher_result(forum, tracker, idea: str, pgr: float) -> str:
    run_id = tracker.log_experiment(f"{idea}/pref-small", {"method": idea}, {"pgr": pgr}, {"aar_kind": "experiment"})
    forum.record_result("r1", "pref-small", idea, f"key-{idea}", [1, 2], pgr, 0.8, [run_id])
    return run_id


def test_generalisation_flags_the_idea_that_ignores_the_teacher_and_only_that_one(campaign):
    config, forum, tracker = campaign
    runs = {idea: _researcher_result(forum, tracker, idea, pgr)
            for idea, pgr in (("vanilla_w2s", 0.3), ("zero_shot_prior", 0.6))}

    table = {row["idea"]: row for row in generalisation_check(config, forum, tracker, parent_run_id=None)}

    # The zero-shot prior compares the two answers with no teacher at all.
    prior = table["zero_shot_prior"]
    assert prior["ignores_teacher"] is True
    assert prior["shuffled_teacher_pgr"] == pytest.approx(prior["pref-small_holdout_pgr"], abs=0.02)
    # Vanilla W2S learns the teacher's labels row by row: shuffled, it falls to chance (PGR ≈ -0.5
    # here), far below the weak model.
    vanilla = table["vanilla_w2s"]
    assert vanilla["ignores_teacher"] is False
    assert vanilla["shuffled_teacher_pgr"] < vanilla["pref-small_holdout_pgr"] - 0.25

    flags = {row.name: row.flags for row in forum.leaderboard("pref-small")}
    assert flags == {"zero_shot_prior": ("ignores_teacher",), "vanilla_w2s": ()}
    client = mlflow.MlflowClient(tracker.uri)
    assert client.get_run(runs["zero_shot_prior"]).data.tags["flags"] == "ignores_teacher"
    assert "flags" not in client.get_run(runs["vanilla_w2s"]).data.tags
    ablation_runs = client.search_runs([tracker.experiment_id], "tags.ablation = 'shuffled_teacher'")
    assert len(ablation_runs) == 2 * 2  # two ideas x two seeds, on the research testbed only


def test_idea_code_sees_the_teacher_only_through_ctx_so_the_ablation_reaches_it(small_home):
    from aar_ray.experiments.ideas import run_idea
    from aar_ray.models import StudentConfig
    from aar_ray.models.artifacts import testbed_vectors, weak_labels

    testbed_vectors("pref-small", small_home, StudentConfig().encoder)  # shared caches, as prepare() fills them

    # An idea that looks for the cached teacher labels, and returns the teacher's own answers.
    peek = (f"import glob\nCACHE = {str(small_home / 'cache' / 'weak')!r}\n"
            "def run(ctx):\n"
            "    ctx.log('cached_teacher_files', len(glob.glob(CACHE + '/**/*.parquet', recursive=True)))\n"
            "    return ctx.weak.probs[ctx.eval_split]\n")
    teacher = weak_labels("pref-small", small_home, ExperimentSpec("pref-small", "", 1, "").teacher, 1)
    assert list((small_home / "cache" / "weak").rglob("*.parquet"))  # the cache is there, outside
    results = {shuffled: run_idea(ExperimentSpec("pref-small", "peek", 1, str(small_home), code=peek,
                                                 shuffle_teacher=shuffled)) for shuffled in (False, True)}
    assert all(r.metrics["cached_teacher_files"] == 0 for r in results.values())
    np.testing.assert_allclose(results[False].probs, teacher.probs["test"], rtol=1e-6)
    assert not np.allclose(results[True].probs, teacher.probs["test"])
