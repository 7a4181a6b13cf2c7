"""Testbeds: named W2S problems with a public view and a sealed store of labels.

`ensure_testbed(name, home)` is the one entry the rest of the system uses: an embedded task
(sentiment, taxonomy, preference) is generated and stored on first use; any other name must
have been imported with `aar testbed import`.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from aar_ray.testbeds.embedded import GENERATORS, STUDENT_HEADS, SplitSizes, generate
from aar_ray.testbeds.store import (EVAL_SPLITS, LAYOUT, PUBLIC_SPLITS, TestbedError, eval_ids,
                                    eval_rows, import_testbed, list_testbeds, load_public, load_sealed,
                                    load_teacher_data, testbed_meta, write_testbed)

EMBEDDED_TESTBEDS = tuple(sorted(GENERATORS))


def generator_seed(home: Path) -> int:
    """The secret the embedded testbeds are drawn from: 128 random bits kept in the sealed store,
    made on first use, one per installation. The generator's code is public, so with a seed in
    that code anyone could replay it and rebuild every label; with this one nobody outside the
    sealed store can."""
    path = Path(home) / "sealed" / "generator.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
        path.chmod(0o600)
    return int(path.read_text().strip(), 16)


def ensure_testbed(name: str, home: Path) -> dict:
    """The testbed's metadata, generating an embedded one into the store if it is missing."""
    recipe = {"embedded": True, "student_head": STUDENT_HEADS.get(name), "sizes": str(SplitSizes())}
    if name in list_testbeds(home):
        meta = testbed_meta(name, home)
        # An embedded testbed stored by an older recipe is regenerated; imported ones never are.
        current = meta.get("layout") == LAYOUT
        if name not in GENERATORS and not current:
            raise TestbedError(f"testbed {name!r} was imported by an older version that kept "
                               "train_label's labels public; import it again with --overwrite")
        if name not in GENERATORS or (current and all(meta.get(k) == v for k, v in recipe.items())):
            return meta
    if name not in GENERATORS:
        known = ", ".join(sorted(set(list_testbeds(home)) | set(GENERATORS)))
        raise TestbedError(f"unknown testbed {name!r}; available: {known} "
                           "(import others with `aar testbed import`)")
    rows = generate(name, seed=generator_seed(home))
    for split_rows in rows.values():
        for i, row in enumerate(split_rows):
            row["id"] = i
    write_testbed(rows, name, home, overwrite=True, extra_meta=recipe)
    return testbed_meta(name, home)


__all__ = ["EMBEDDED_TESTBEDS", "EVAL_SPLITS", "PUBLIC_SPLITS", "SplitSizes", "TestbedError",
           "ensure_testbed", "eval_ids", "eval_rows", "generator_seed", "import_testbed",
           "list_testbeds", "load_public", "load_sealed", "load_teacher_data",
           "testbed_meta"]
