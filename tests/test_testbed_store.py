import pandas as pd
import pytest
from conftest import write_jsonl_folder

from aar_ray.testbeds.embedded import SplitSizes, generate
from aar_ray.testbeds.store import TestbedError, import_testbed, load_public
from aar_ray.testbeds.store import testbed_meta as read_meta

SMALL = SplitSizes(train_label=20, train_unlabel=40, test=30)


@pytest.mark.parametrize("task", ["taxonomy", "preference"])
def test_import_seals_labels_of_unlabelled_and_test(tmp_path, task):
    src = write_jsonl_folder(tmp_path / "src", generate(task, sizes=SMALL))
    import_testbed(src, task, tmp_path / "home")
    public = load_public(task, tmp_path / "home")
    assert "label" in public["train_label"] and len(public["train_label"]) == 20
    for split in ("train_unlabel", "validation", "holdout"):
        assert "label" not in public[split]
        sealed = pd.read_parquet(tmp_path / "home" / "sealed" / task / f"{split}.parquet")
        assert list(sealed.columns) == ["id", "label"] and len(sealed) == len(public[split])
    # no file under the public tree carries a sealed label column
    for f in (tmp_path / "home" / "testbeds").rglob("*.parquet"):
        if f.stem != "train_label":
            assert "label" not in pd.read_parquet(f).columns


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
    a, b = load_public("a", tmp_path / "home"), load_public("b", tmp_path / "home")
    val, hold = set(a["validation"]["id"]), set(a["holdout"]["id"])
    assert not val & hold and val | hold == set(range(400))
    assert 150 < len(val) < 250
    assert val == set(b["validation"]["id"])
