"""Import a testbed folder (the released sandbox's JSONL layout) into parquet, sealing labels.

Layout under the aar home (default `./.aar`):
  testbeds/<name>/public/<split>.parquet   what everyone reads: labels only on train_label
  testbeds/<name>/meta.json                format, row counts, content hash
  sealed/<name>/<split>.parquet            id + label of the other splits: the scorer's alone
`test.jsonl` is cut once, by a hash of each row's id, into `validation` (scored during a
campaign) and `holdout` (scored only by the operator), so agents never see a number for holdout.
Every row is validated first; an error names `file:line` and nothing is left half-imported.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

SOURCE_SPLITS = ("train_label", "train_unlabel", "test")  # the files of a testbed folder
SPLITS = ("train_label", "train_unlabel", "validation", "holdout")  # what the store keeps
SEALED_SPLITS = ("train_unlabel", "validation", "holdout")
EVAL_SPLITS = ("validation", "holdout")
FORMATS = {"binary": ("question", "choice"), "comparison": ("prompt", "first", "second")}
HIDDEN_FIELDS = ("label", "subset", "difficulty")  # removed from the public view, as released


class TestbedError(ValueError):
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


def write_testbed(rows_by_split: dict[str, list[dict]], name: str, home: Path,
                  overwrite: bool = False, extra_meta: dict | None = None) -> Path:
    """Write validated rows (train_label, train_unlabel, test) as public and sealed parquet,
    atomically (temp folder, then rename)."""
    home = Path(home)
    public_dir, sealed_dir = home / "testbeds" / name, home / "sealed" / name
    if (public_dir.exists() or sealed_dir.exists()) and not overwrite:
        raise TestbedError(f"testbed {name!r} already exists under {home}; pass overwrite to replace it")
    (home / "testbeds").mkdir(parents=True, exist_ok=True)
    (home / "sealed").mkdir(parents=True, exist_ok=True)
    tmp_public = Path(tempfile.mkdtemp(dir=home / "testbeds", prefix=f".{name}-"))
    tmp_sealed = Path(tempfile.mkdtemp(dir=home / "sealed", prefix=f".{name}-"))
    stored = {"train_label": rows_by_split["train_label"],
              "train_unlabel": rows_by_split["train_unlabel"], **cut_test(rows_by_split["test"])}
    fmt = "binary" if "choice" in rows_by_split["train_label"][0] else "comparison"
    meta = {"name": name, "format": fmt, "rows": {s: len(r) for s, r in stored.items()},
            "content_hash": _content_hash(rows_by_split), **(extra_meta or {})}
    tmp_public.chmod(0o755)  # public: readable by the unprivileged user sandboxed code runs as
    try:
        (tmp_public / "public").mkdir()
        (tmp_public / "meta.json").write_text(json.dumps(meta, indent=2))
        for split in SPLITS:
            frame = pd.DataFrame(stored[split])
            if split in SEALED_SPLITS:
                frame[["id", "label"]].to_parquet(tmp_sealed / f"{split}.parquet", index=False)
                frame = frame.drop(columns=[c for c in HIDDEN_FIELDS if c in frame])
            frame.to_parquet(tmp_public / "public" / f"{split}.parquet", index=False)
        for final, tmp in ((public_dir, tmp_public), (sealed_dir, tmp_sealed)):
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp_public, ignore_errors=True)
        shutil.rmtree(tmp_sealed, ignore_errors=True)
    return public_dir


def import_testbed(source: Path, name: str, home: Path, overwrite: bool = False) -> Path:
    """Validate all three JSONL files of `source`, then store them; nothing is written on error."""
    fmt, rows_by_split = None, {}
    for split in SOURCE_SPLITS:
        fmt, rows_by_split[split] = read_jsonl(Path(source) / f"{split}.jsonl", fmt)
    return write_testbed(rows_by_split, name, home, overwrite)


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
    """The public view of a testbed: what methods and researchers may read."""
    testbed_meta(name, home)
    base = Path(home) / "testbeds" / name / "public"
    return {split: pd.read_parquet(base / f"{split}.parquet") for split in SPLITS}


def load_sealed(name: str, home: Path, split: str) -> pd.DataFrame:
    """id + label of a sealed split. Only the scorer calls this."""
    return pd.read_parquet(Path(home) / "sealed" / name / f"{split}.parquet")
