"""Import a testbed folder (the released sandbox's JSONL layout) into parquet, sealing labels.

Three parties read a testbed, and each has its own folder under the aar home:
  testbeds/<name>/public/<split>.parquet   researchers and their code: train_unlabel and test,
                                           with the format's fields (an allow-list) and no label
  testbeds/<name>/meta.json                format, row counts, content hash, which fields went where
  teacher/<name>/train_label.parquet       the harness: the teacher's labelled training rows.
                                           Researchers never see them, as in the study's sandbox,
                                           where they only get the teacher's predictions
  sealed/<name>/<split>.parquet            the scorer alone: labels (and every field not made
                                           public) of train_unlabel, validation and holdout
`test.jsonl` is public as one split, `test`; the scorer cuts it, by a hash of each row's id, into
`validation` (scored during a campaign) and `holdout` (scored only by the operator). Methods
always predict the whole test split, so an idea cannot tell which half a run is scored on.
Every row is validated first; an error names `file:line` and nothing is left half-imported.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from aar_ray.errors import UserError

SOURCE_SPLITS = ("train_label", "train_unlabel", "test")  # the files of a testbed folder
PUBLIC_SPLITS = ("train_unlabel", "test")  # what researchers, their code and methods read
SEALED_SPLITS = ("train_unlabel", "validation", "holdout")
EVAL_SPLITS = ("validation", "holdout")  # the scorer's halves of the public `test` split
LAYOUT = 2  # 2: train_label with the teacher, one public test split, allow-listed public fields
FORMATS = {"binary": ("question", "choice"), "comparison": ("prompt", "first", "second")}


class TestbedError(UserError, ValueError):
    """A testbed file that cannot be imported; the message starts with `file:line:`."""

    __test__ = False  # a name starting with "Test" is not a pytest class


def _row_format(row: dict, where: str) -> str:
    for name, fields in FORMATS.items():
        if all(f in row for f in fields):
            return name
    raise TestbedError(f"{where}: row has neither binary fields (question, choice) "
                       "nor comparison fields (prompt, first, second)")


def _check_row(row: dict, fmt: str, where: str) -> None:
    for field in FORMATS[fmt]:
        if not isinstance(row.get(field), str):
            raise TestbedError(f"{where}: field {field!r} must be a string, got {row.get(field)!r}")
    if "label" not in row:
        raise TestbedError(f"{where}: missing field 'label'")
    label = row["label"]
    if fmt == "binary" and not isinstance(label, bool):
        raise TestbedError(f"{where}: label must be true or false, got {label!r}")
    if fmt == "comparison" and label not in ("A", "B"):
        raise TestbedError(f"{where}: label must be \"A\" or \"B\", got {label!r}")


def read_jsonl(path: Path, fmt: str | None = None) -> tuple[str, list[dict]]:
    """Validated rows of one split, each given an `id` (its position unless the row has one)."""
    if not path.exists():
        raise TestbedError(f"{path}: file not found (a testbed folder holds "
                           f"{', '.join(s + '.jsonl' for s in SOURCE_SPLITS)})")
    rows, first_seen = [], {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TestbedError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise TestbedError(f"{where}: expected a JSON object, got {type(row).__name__}")
        row_fmt = _row_format(row, where)
        fmt = fmt or row_fmt
        if row_fmt != fmt:
            raise TestbedError(f"{where}: {row_fmt} row in a {fmt} testbed")
        _check_row(row, fmt, where)
        row_id = row.get("id", len(rows))
        if row_id in first_seen:
            raise TestbedError(f"{where}: duplicate id {row_id!r} (first seen on line {first_seen[row_id]})")
        first_seen[row_id] = lineno
        rows.append({**row, "id": row_id})
    if not rows:
        raise TestbedError(f"{path}: empty file, expected one JSON row per line")
    return fmt, rows


def _in_holdout(row_id) -> bool:
    """Half of the rows, chosen by a hash of the id: stable across re-imports and machines."""
    return hashlib.sha256(str(row_id).encode()).digest()[0] % 2 == 1


def cut_test(rows: list[dict]) -> dict[str, list[dict]]:
    return {"validation": [r for r in rows if not _in_holdout(r["id"])],
            "holdout": [r for r in rows if _in_holdout(r["id"])]}


def _content_hash(rows_by_split: dict[str, list[dict]]) -> str:
    digest = hashlib.sha256()
    for split in SOURCE_SPLITS:
        for row in rows_by_split[split]:
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def public_fields(fmt: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The allow-list of the public view: the id, the format's text fields and the fields the
    user named on import. Anything else a row carries is sealed, since any field may encode the
    label (`is_correct`, `difficulty`, a grader's note)."""
    return ["id", *FORMATS[fmt], *(f for f in extra if f not in FORMATS[fmt] and f != "id")]


def write_testbed(rows_by_split: dict[str, list[dict]], name: str, home: Path,
                  overwrite: bool = False, extra_meta: dict | None = None,
                  public_extra: tuple[str, ...] = ()) -> Path:
    """Write validated rows (train_label, train_unlabel, test) as public, teacher and sealed
    parquet, atomically (temp folders, then renames)."""
    home = Path(home)
    fmt = "binary" if "choice" in rows_by_split["train_label"][0] else "comparison"
    if "label" in public_extra:
        raise TestbedError("'label' cannot be a public field")
    folders = {"public": home / "testbeds" / name, "teacher": home / "teacher" / name,
               "sealed": home / "sealed" / name}
    if any(f.exists() for f in folders.values()) and not overwrite:
        raise TestbedError(f"testbed {name!r} already exists under {home}; pass overwrite to replace it")
    seen = sorted({k for rows in rows_by_split.values() for row in rows for k in row})
    allowed = public_fields(fmt, public_extra)
    missing = [f for f in allowed if f not in seen]
    if missing:
        raise TestbedError(f"public field(s) {missing} are not in the rows; fields present: {seen}")
    sealed_fields = [f for f in seen if f not in allowed]
    meta = {"name": name, "format": fmt,
            "rows": {"train_label": len(rows_by_split["train_label"]),
                     "train_unlabel": len(rows_by_split["train_unlabel"]),
                     **{s: len(r) for s, r in cut_test(rows_by_split["test"]).items()}},
            "content_hash": _content_hash(rows_by_split), "public_fields": allowed,
            "sealed_fields": sealed_fields, "teacher_only": ["train_label"], "layout": LAYOUT,
            **(extra_meta or {})}
    tmp = {}
    try:
        for role, final in folders.items():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp[role] = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-"))
        tmp["public"].chmod(0o755)  # public: readable by the unprivileged user sandboxed code runs as
        (tmp["public"] / "public").mkdir()
        (tmp["public"] / "meta.json").write_text(json.dumps(meta, indent=2))
        teacher = pd.DataFrame(rows_by_split["train_label"])
        teacher[[*FORMATS[fmt], "id", "label"]].to_parquet(tmp["teacher"] / "train_label.parquet", index=False)
        test = pd.DataFrame(rows_by_split["test"])
        unlabel = pd.DataFrame(rows_by_split["train_unlabel"])
        for split, frame in (("train_unlabel", unlabel), ("test", test)):
            frame[allowed].to_parquet(tmp["public"] / "public" / f"{split}.parquet", index=False)
        halves = {"validation": test[~test["id"].map(_in_holdout)], "holdout": test[test["id"].map(_in_holdout)]}
        for split, frame in (("train_unlabel", unlabel), *halves.items()):
            frame[["id", *[f for f in sealed_fields if f in frame]]].to_parquet(
                tmp["sealed"] / f"{split}.parquet", index=False)
        for role, final in folders.items():
            shutil.rmtree(final, ignore_errors=True)
            tmp[role].rename(final)
    finally:
        for path in tmp.values():
            shutil.rmtree(path, ignore_errors=True)
    return folders["public"]


def import_testbed(source: Path, name: str, home: Path, overwrite: bool = False,
                   public_extra: tuple[str, ...] = ()) -> Path:
    """Validate all three JSONL files of `source`, then store them; nothing is written on error.
    `public_extra` names fields beyond the format's that researchers may see (e.g.
    `consistency_id`); every other field is sealed."""
    fmt, rows_by_split = None, {}
    for split in SOURCE_SPLITS:
        fmt, rows_by_split[split] = read_jsonl(Path(source) / f"{split}.jsonl", fmt)
    return write_testbed(rows_by_split, name, home, overwrite, public_extra=tuple(public_extra))


def list_testbeds(home: Path) -> list[str]:
    root = Path(home) / "testbeds"
    return sorted(p.parent.name for p in root.glob("*/meta.json")) if root.exists() else []


def testbed_meta(name: str, home: Path) -> dict:
    path = Path(home) / "testbeds" / name / "meta.json"
    if not path.exists():
        known = ", ".join(list_testbeds(home)) or "none yet"
        raise TestbedError(f"no testbed {name!r} under {home} (imported: {known})")
    return json.loads(path.read_text())


def load_public(name: str, home: Path) -> dict[str, pd.DataFrame]:
    """The public view of a testbed: what methods and researchers may read (no label anywhere)."""
    testbed_meta(name, home)
    base = Path(home) / "testbeds" / name / "public"
    return {split: pd.read_parquet(base / f"{split}.parquet") for split in PUBLIC_SPLITS}


def eval_rows(test_ids, split: str) -> np.ndarray:
    """Which rows of the public test split (by their ids) belong to `split` (validation or holdout)."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"eval split must be one of {EVAL_SPLITS}, got {split!r}")
    return np.array([_in_holdout(i) == (split == "holdout") for i in test_ids], dtype=bool)


def eval_ids(name: str, home: Path, split: str) -> list:
    """The ids of `split` (validation or holdout), in the public test split's order."""
    ids = load_public(name, home)["test"]["id"].tolist()
    return [i for i, keep in zip(ids, eval_rows(ids, split)) if keep]


def load_teacher_data(name: str, home: Path) -> pd.DataFrame:
    """train_label with its labels: what the harness trains the weak teacher on. Researchers'
    code never sees it (the sandbox does not mount `teacher/`)."""
    testbed_meta(name, home)
    return pd.read_parquet(Path(home) / "teacher" / name / "train_label.parquet")


def load_sealed(name: str, home: Path, split: str) -> pd.DataFrame:
    """id + label (+ other sealed fields) of a sealed split. Only the scorer calls this."""
    return pd.read_parquet(Path(home) / "sealed" / name / f"{split}.parquet")
