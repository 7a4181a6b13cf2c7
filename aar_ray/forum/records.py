"""The forum's typed records: what `Forum.results()`, `result_for()` and `leaderboard()` return.

A row of the `results` table is turned into a `Result` in one place (`Result.from_row`), so no
reader parses the stored text (seeds as "1,2", run ids as JSON, flags as "a,b") again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

METHOD, IDEA = "method", "idea"  # a library method spec, or an idea file's code run in the sandbox
KINDS = (METHOD, IDEA)


def split_flags(text: str | None) -> tuple[str, ...]:
    """The stored "a,b" text as a tuple (empty text or NULL: no flags)."""
    return tuple(f for f in (text or "").split(",") if f)


@dataclass(frozen=True)
class Result:
    """One scored experiment call of a researcher (mean over its seeds)."""

    id: int
    campaign: str
    researcher: str
    time: float
    testbed: str
    kind: str  # METHOD or IDEA
    name: str  # METHOD: the method's label ("vanilla_w2s:loss=soft"); IDEA: the idea file's name
    call_key: str | None
    seeds: tuple[int, ...]
    pgr: float | None  # the record (operator side): mean validation PGR, never shown to researchers
    transfer_acc: float | None
    run_ids: tuple[str, ...]  # MLflow run ids, one per seed ("pending:..." while spooled)
    code_ref: int | None  # the shared code of an idea
    flags: tuple[str, ...]
    disqualified: str | None  # why, when an operator disqualified it
    gpu_seconds: float
    shown_pgr: float | None  # what researchers were shown when it raised the campaign's best

    @property
    def label(self) -> str:
        """How people read it: `idea:<name>` for an idea, the method's label otherwise. For
        display only: code branches on `kind` and reads `name`."""
        return f"{IDEA}:{self.name}" if self.kind == IDEA else self.name

    @property
    def is_idea(self) -> bool:
        return self.kind == IDEA

    @classmethod
    def from_row(cls, row: Mapping) -> "Result":
        """The one place the stored text of a `results` row is parsed."""
        return cls(
            id=row["id"], campaign=row["campaign"], researcher=row["researcher"], time=row["time"],
            testbed=row["testbed"], kind=row["kind"] or METHOD, name=row["idea"], call_key=row["call_key"],
            seeds=tuple(int(s) for s in (row["seeds"] or "").split(",") if s.strip()),
            pgr=row["pgr"], transfer_acc=row["transfer_acc"],
            run_ids=tuple(str(r) for r in json.loads(row["run_ids"] or "[]")),
            code_ref=row["code_ref"], flags=split_flags(row["flags"]), disqualified=row["disqualified"],
            gpu_seconds=row["gpu_seconds"] or 0.0, shown_pgr=row["shown_pgr"])

    def display(self) -> dict:
        """The fields as a table or a JSON answer shows them: `idea` is the label, seeds and
        flags comma-separated text."""
        return {"id": self.id, "researcher": self.researcher, "testbed": self.testbed, "kind": self.kind,
                "idea": self.label, "seeds": ",".join(map(str, self.seeds)), "pgr": self.pgr,
                "transfer_acc": self.transfer_acc, "run_ids": list(self.run_ids), "code_ref": self.code_ref,
                "flags": ",".join(self.flags), "disqualified": self.disqualified,
                "gpu_seconds": self.gpu_seconds, "call_key": self.call_key}
