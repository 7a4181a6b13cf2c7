import numpy as np
import pytest

from aar_ray.testbeds.embedded import GENERATORS, SplitSizes, generate

SMALL = SplitSizes(train_label=50, train_unlabel=200, test=100)


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_generation_is_deterministic_and_split_sized(task):
    a, b = generate(task, seed=3, sizes=SMALL), generate(task, seed=3, sizes=SMALL)
    assert a == b
    assert {k: len(v) for k, v in a.items()} == {"train_label": 50, "train_unlabel": 200, "test": 100}
    assert generate(task, seed=4, sizes=SMALL) != a


@pytest.mark.parametrize("task", ["sentiment", "taxonomy"])
def test_binary_rows_follow_the_released_format(task):
    rows = generate(task, sizes=SMALL)["test"]
    assert all(set(r) == {"question", "choice", "label"} and isinstance(r["label"], bool) for r in rows)
    share_true = np.mean([r["label"] for r in rows])
    assert 0.3 < share_true < 0.7


def test_comparison_rows_follow_the_released_format():
    rows = generate("preference", sizes=SMALL)["test"]
    assert all(set(r) == {"prompt", "first", "second", "label"} and r["label"] in ("A", "B") for r in rows)
    assert all(r["first"] != r["second"] for r in rows)


def test_negation_flips_the_sentiment_label():
    from aar_ray.testbeds.lexicon import POSITIVE

    rows = generate("sentiment", sizes=SplitSizes(0, 0, 2000))["test"]
    negated = [r for r in rows if "The " in r["question"] and " was not " in r["question"]]
    assert len(negated) > 20
    for r in negated:
        adjective = r["question"].split(" was not ")[1].split(".")[0]
        says_negative = adjective in POSITIVE
        assert r["label"] == ((r["choice"] == "negative") == says_negative)


def test_unknown_task_names_the_choices():
    with pytest.raises(KeyError, match="preference"):
        generate("nope")
