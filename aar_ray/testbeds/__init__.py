"""Testbeds: named W2S problems with a public view and a sealed store of labels.

`ensure_testbed(name, home)` is the one entry the rest of the system uses: an embedded task
(sentiment, taxonomy, preference) is generated and stored on first use; any other name must
have been imported with `aar testbed import`.
"""

from __future__ import annotations

from pathlib import Path

from aar_ray.testbeds.embedded import GENERATORS, STUDENT_HEADS, SplitSizes, generate
from aar_ray.testbeds.store import (EVAL_SPLITS, SPLITS, TestbedError, import_testbed,
                                    list_testbeds, load_public, load_sealed, testbed_meta,
                                    write_testbed)

EMBEDDED_TESTBEDS = tuple(sorted(GENERATORS))


def ensure_testbed(name: str, home: Path) -> dict:
    """The testbed's metadata, generating an embedded one into the store if it is missing."""
    recipe = {"embedded": True, "student_head": STUDENT_HEADS.get(name), "sizes": str(SplitSizes())}
    if name in list_testbeds(home):
        meta = testbed_meta(name, home)
        # An embedded testbed stored by an older recipe is regenerated; imported ones never are.
        if name not in GENERATORS or all(meta.get(k) == v for k, v in recipe.items()):
            return meta
    if name not in GENERATORS:
        known = ", ".join(sorted(set(list_testbeds(home)) | set(GENERATORS)))
        raise TestbedError(f"unknown testbed {name!r}; available: {known} "
                           "(import others with `aar testbed import`)")
    rows = generate(name)
    for split_rows in rows.values():
        for i, row in enumerate(split_rows):
            row["id"] = i
    write_testbed(rows, name, home, overwrite=True, extra_meta=recipe)
    return testbed_meta(name, home)


__all__ = ["EMBEDDED_TESTBEDS", "EVAL_SPLITS", "SPLITS", "SplitSizes", "TestbedError",
           "ensure_testbed", "import_testbed", "list_testbeds", "load_public", "load_sealed",
           "testbed_meta"]
