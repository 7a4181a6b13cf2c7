"""The suite's own hygiene: a test's environment changes do not reach the next test (nor the
subprocesses it starts). The two tests run in file order; the second fails if the first leaked."""

import os

import mlflow

LEAK = "AAR_TEST_LEAK_CANARY"
SET_BY_THE_FIRST = []


def test_a_test_may_point_mlflow_anywhere_and_set_variables(tmp_path):
    SET_BY_THE_FIRST.append(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(SET_BY_THE_FIRST[0])
    os.environ[LEAK] = "1"
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("mlflow.db")  # mlflow exports what it is set to


def test_the_next_test_starts_without_them():
    assert LEAK not in os.environ
    assert os.environ.get("MLFLOW_TRACKING_URI") is None
    assert SET_BY_THE_FIRST and mlflow.get_tracking_uri() != SET_BY_THE_FIRST[0]
