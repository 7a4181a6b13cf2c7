"""Each library method through the one `run(ctx)` contract, on small imported testbeds."""

import numpy as np
import pytest
import torch

from aar_ray.experiments import ExperimentSpec, run_method
from aar_ray.methods import METHODS, MethodSpecError, method_label, parse_method
from aar_ray.methods.aux_confidence import confidence_loss
from aar_ray.models import StudentConfig
from aar_ray.scoring import Scorer, ScorerConfig
from aar_ray.testbeds import eval_ids, load_public

QUICK = StudentConfig(head="bilinear", epochs=10)


def _spec(home, testbed, method_spec, split="validation", seed=1):
    name, params = parse_method(method_spec)
    return ExperimentSpec(testbed, name, seed, str(home), params, QUICK, eval_split=split)


# the methods that train several students run in the slow tier
TRAINS_REPEATEDLY = {"aux_confidence", "self_training"}


@pytest.mark.parametrize("testbed", ["tax-small", "pref-small"])
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in TRAINS_REPEATEDLY else m
                                    for m in sorted(METHODS)])
def test_every_method_returns_a_probability_per_test_row(small_home, testbed, method):
    result = run_method(_spec(small_home, testbed, method))
    ids = load_public(testbed, small_home)["test"]["id"].tolist()
    assert result.ids == ids
    assert result.probs.shape == (len(ids),)
    assert np.all((result.probs >= 0) & (result.probs <= 1))
    assert result.wall_seconds > 0


def test_runs_are_deterministic_per_seed_and_differ_across_seeds(small_home):
    a = run_method(_spec(small_home, "tax-small", "vanilla_w2s"))
    b = run_method(_spec(small_home, "tax-small", "vanilla_w2s"))
    c = run_method(_spec(small_home, "tax-small", "vanilla_w2s", seed=2))
    np.testing.assert_allclose(a.probs, b.probs)
    assert not np.allclose(a.probs, c.probs)


@pytest.mark.slow
def test_the_student_prior_knows_taxonomy_without_any_label(small_home):
    scorer = Scorer(small_home, ScorerConfig(queries_per_analyst=100, baseline_seeds=2))
    result = run_method(_spec(small_home, "tax-small", "zero_shot_prior"))
    assert scorer.submit("methods-test", "tax-small", *result.half("validation"))["transfer_acc"] > 0.75


def test_a_method_cannot_tell_a_holdout_run_from_a_validation_run(small_home):
    """Both predict the whole test split, identically; only the half the scorer reads differs."""
    validation = run_method(_spec(small_home, "tax-small", "vanilla_w2s"))
    holdout = run_method(_spec(small_home, "tax-small", "vanilla_w2s", split="holdout"))
    np.testing.assert_array_equal(validation.probs, holdout.probs)
    assert holdout.half("holdout")[0] == eval_ids("tax-small", small_home, "holdout")
    assert not set(holdout.half("holdout")[0]) & set(validation.half("validation")[0])


def test_confident_only_trains_on_the_confident_share_and_says_so(small_home):
    result = run_method(_spec(small_home, "tax-small", "confident_only:low=0.4,high=0.6"))
    assert 0 < result.metrics["kept_fraction"] < 1
    with pytest.raises(ValueError, match="widen the thresholds"):
        run_method(_spec(small_home, "tax-small", "confident_only:low=0.0,high=1.0"))


def test_self_training_logs_its_agreement_with_the_teacher(small_home):
    result = run_method(_spec(small_home, "pref-small", "self_training:rounds=2"))
    assert set(result.metrics) == {"agreement_with_teacher_round1", "agreement_with_teacher_round2"}


def test_zero_shot_prior_uses_no_teacher_label_on_comparisons(small_home):
    """Comparisons need no threshold, so the teacher's labels must not change the prediction."""
    from aar_ray.methods import zero_shot_prior
    from aar_ray.methods.context import MethodContext
    from aar_ray.models import student_factory

    def ctx(weak):
        from aar_ray.models.artifacts import WeakLabels

        return MethodContext("pref-small", "comparison", load_public("pref-small", small_home),
                             WeakLabels({"train_unlabel": weak}, {}, 1), "test", 1,
                             dict(zero_shot_prior.DEFAULTS),
                             student_factory("pref-small", small_home, QUICK, 1))
    np.testing.assert_allclose(zero_shot_prior.run(ctx(np.zeros(600))), zero_shot_prior.run(ctx(np.ones(600))))


def test_aux_confidence_weight_ramps_from_teacher_to_self():
    logits = torch.tensor([3.0, -3.0, 2.0, -2.0])
    weak = torch.tensor([0.0, 1.0, 1.0, 0.0])  # disagrees with the student on the first two
    loss = confidence_loss(alpha=0.75, warmup=0.5)
    teacher_only = torch.nn.functional.binary_cross_entropy_with_logits(logits, weak, reduction="none")
    torch.testing.assert_close(loss(logits, weak, 0.0), teacher_only)
    assert loss(logits, weak, 1.0)[:2].sum() < teacher_only[:2].sum()  # own guesses now count


def test_method_specs_name_the_allowed_parameters():
    assert parse_method("vanilla_w2s:loss=soft") == ("vanilla_w2s", {"loss": "soft"})
    assert parse_method("self_training:rounds=3")[1]["rounds"] == 3
    assert method_label("vanilla_w2s", {"loss": "hard"}) == "vanilla_w2s"
    with pytest.raises(MethodSpecError, match="allowed: vanilla_w2s"):
        parse_method("majority_vote")
    with pytest.raises(MethodSpecError, match="allowed: loss"):
        parse_method("vanilla_w2s:lr=1")
    with pytest.raises(MethodSpecError, match="allowed: hard, soft"):
        parse_method("vanilla_w2s:loss=focal")
    with pytest.raises(MethodSpecError, match="not a int"):
        parse_method("self_training:rounds=many")
