import pandas as pd
import pytest
from conftest import write_jsonl_folder

from aar_ray.testbeds.embedded import SplitSizes, generate
from aar_ray.testbeds.store import TestbedError, eval_ids, import_testbed, load_public, load_teacher_data
from aar_ray.testbeds.store import testbed_meta as read_meta

SMALL = SplitSizes(train_label=20, train_unlabel=40, test=30)


@pytest.mark.parametrize("task", ["taxonomy", "preference"])
def test_import_seals_every_label_and_keeps_train_label_with_the_teacher(tmp_path, task):
    src = write_jsonl_folder(tmp_path / "src", generate(task, sizes=SMALL))
    import_testbed(src, task, tmp_path / "home")
    public = load_public(task, tmp_path / "home")
    assert set(public) == {"train_unlabel", "test"} and len(public["test"]) == 30
    teacher = load_teacher_data(task, tmp_path / "home")
    assert "label" in teacher and len(teacher) == 20
    for split in ("train_unlabel", "validation", "holdout"):
        sealed = pd.read_parquet(tmp_path / "home" / "sealed" / task / f"{split}.parquet")
        expected = public[split]["id"].tolist() if split == "train_unlabel" else eval_ids(task, tmp_path / "home", split)
        assert list(sealed.columns) == ["id", "label"] and sealed["id"].tolist() == expected
    # nothing under the public tree carries a label, and train_label is not there at all
    public_files = sorted((tmp_path / "home" / "testbeds").rglob("*.parquet"))
    assert [f.stem for f in public_files] == ["test", "train_unlabel"]
    assert all("label" not in pd.read_parquet(f).columns for f in public_files)


def test_the_public_view_is_an_allow_list_and_show_says_what_went_where(tmp_path):
    rows = generate("taxonomy", sizes=SMALL)
    for split_rows in rows.values():
        for i, row in enumerate(split_rows):
            row.update(is_correct=row["label"], consistency_id=i // 2, subset="a")
    src = write_jsonl_folder(tmp_path / "src", rows)
    import_testbed(src, "t", tmp_path / "home", public_extra=("consistency_id",))
    public = load_public("t", tmp_path / "home")
    assert list(public["test"].columns) == ["id", "question", "choice", "consistency_id"]
    meta = read_meta("t", tmp_path / "home")
    assert meta["sealed_fields"] == ["is_correct", "label", "subset"]
    sealed = pd.read_parquet(tmp_path / "home" / "sealed" / "t" / "validation.parquet")
    assert {"is_correct", "label", "subset"} <= set(sealed.columns)
    with pytest.raises(TestbedError, match=r"public field\(s\) \['grader_note'\] are not in the rows"):
        import_testbed(src, "u", tmp_path / "home", public_extra=("grader_note",))
    with pytest.raises(TestbedError, match="'label' cannot be a public field"):
        import_testbed(src, "u", tmp_path / "home", public_extra=("label",))


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"question": "q", "label": true}', "neither binary fields"),
    ('{"question": "q", "choice": "c"}', "missing field 'label'"),
    ('{"question": "q", "choice": "c", "label": "yes"}', "label must be true or false"),
    ('{"question": "q", "choice": 3, "label": true}', "field 'choice' must be a string"),
    ('{"prompt": "p", "first": "a", "second": "b", "label": "A"}', "comparison row in a binary testbed"),
])
def test_bad_rows_name_file_and_line_and_leave_nothing(tmp_path, bad_line, message):
    rows = generate("taxonomy", sizes=SMALL)
    src = write_jsonl_folder(tmp_path / "src", rows)
    with open(src / "test.jsonl", "a") as f:
        f.write(bad_line + "\n")
    with pytest.raises(TestbedError, match=rf"test.jsonl:31: .*{message}"):
        import_testbed(src, "t", tmp_path / "home")
    assert not (tmp_path / "home" / "testbeds" / "t").exists()
    assert not (tmp_path / "home" / "sealed" / "t").exists()


def test_duplicate_ids_and_empty_files_are_rejected(tmp_path):
    rows = generate("taxonomy", sizes=SMALL)
    rows["train_label"] = [{**r, "id": 7} for r in rows["train_label"][:2]]
    src = write_jsonl_folder(tmp_path / "src", rows)
    with pytest.raises(TestbedError, match=r"train_label.jsonl:2: duplicate id 7 \(first seen on line 1\)"):
        import_testbed(src, "t", tmp_path / "home")
    (src / "train_label.jsonl").write_text("\n")
    with pytest.raises(TestbedError, match="empty file"):
        import_testbed(src, "t", tmp_path / "home")


def test_reimport_needs_overwrite_and_keeps_the_old_copy(tmp_path):
    src = write_jsonl_folder(tmp_path / "src", generate("taxonomy", sizes=SMALL))
    import_testbed(src, "t", tmp_path / "home")
    with pytest.raises(TestbedError, match="already exists"):
        import_testbed(src, "t", tmp_path / "home")
    assert sum(read_meta("t", tmp_path / "home")["rows"].values()) == 90
    import_testbed(src, "t", tmp_path / "home", overwrite=True)
    assert sum(read_meta("t", tmp_path / "home")["rows"].values()) == 90


def test_test_split_is_cut_once_into_validation_and_holdout(tmp_path):
    rows = generate("sentiment", sizes=SplitSizes(train_label=20, train_unlabel=40, test=400))
    src = write_jsonl_folder(tmp_path / "src", rows)
    import_testbed(src, "a", tmp_path / "home")
    import_testbed(src, "b", tmp_path / "home")  # same rows under another name: same cut
    val, hold = (set(eval_ids("a", tmp_path / "home", s)) for s in ("validation", "holdout"))
    assert not val & hold and val | hold == set(range(400)) == set(load_public("a", tmp_path / "home")["test"]["id"])
    assert 150 < len(val) < 250
    assert val == set(eval_ids("b", tmp_path / "home", "validation"))
