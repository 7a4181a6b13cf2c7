"""Import a testbed folder (the released sandbox's JSONL layout) into parquet, sealing labels.

Layout under the aar home (default `./.aar`):
  testbeds/<name>/public/<split>.parquet   what everyone reads: labels only on train_label
  sealed/<name>/<split>.parquet            id + label of train_unlabel and test: the scorer's alone
Every row is validated first; an error names `file:line` and nothing is left half-imported.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

SPLITS = ("train_label", "train_unlabel", "test")
SEALED_SPLITS = ("train_unlabel", "test")
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
        raise TestbedError(f"{path}: file not found (a testbed folder holds {', '.join(s + '.jsonl' for s in SPLITS)})")
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


def write_testbed(rows_by_split: dict[str, list[dict]], name: str, home: Path,
                  overwrite: bool = False) -> Path:
    """Write validated rows as public and sealed parquet, atomically (temp folder, then rename)."""
    home = Path(home)
    public_dir, sealed_dir = home / "testbeds" / name, home / "sealed" / name
    if (public_dir.exists() or sealed_dir.exists()) and not overwrite:
        raise TestbedError(f"testbed {name!r} already exists under {home}; pass overwrite to replace it")
    (home / "testbeds").mkdir(parents=True, exist_ok=True)
    (home / "sealed").mkdir(parents=True, exist_ok=True)
    tmp_public = Path(tempfile.mkdtemp(dir=home / "testbeds", prefix=f".{name}-"))
    tmp_sealed = Path(tempfile.mkdtemp(dir=home / "sealed", prefix=f".{name}-"))
    try:
        (tmp_public / "public").mkdir()
        for split in SPLITS:
            frame = pd.DataFrame(rows_by_split[split])
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
    for split in SPLITS:
        fmt, rows_by_split[split] = read_jsonl(Path(source) / f"{split}.jsonl", fmt)
    return write_testbed(rows_by_split, name, home, overwrite)


def load_public(name: str, home: Path) -> dict[str, pd.DataFrame]:
    """The public view of a testbed: what methods and researchers may read."""
    base = Path(home) / "testbeds" / name / "public"
    if not base.exists():
        raise TestbedError(f"no testbed {name!r} under {home}")
    return {split: pd.read_parquet(base / f"{split}.parquet") for split in SPLITS}
