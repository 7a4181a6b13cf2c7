"""A researcher's spending limits: tokens, dollars, experiments and agent-hours.

A `Budget` has optional caps and counts what has been spent (`Spend`). Money is guarded
*before* it is spent: ``check(...)`` raises `BudgetExceeded` (naming the cap, what was used and the
cap) when the estimated cost of the next action would take the spend past a cap, and
``charge(...)`` records the actual cost afterwards. Charging never refuses: the money is gone, and
the overshoot shows up as an exhausted budget on the next check.

Where it is enforced: the researcher checks and charges every model call (its turns and its
summaries) in `Researcher._paid_step`, and `run_experiment` checks and charges each experiment;
`Researcher.step` charges the agent-hours. A campaign's caps live in its ledger
(`aar_ray.agents.ledger.CampaignLedger`): its dollars and agent-hours become per-researcher shares
(equal by default) set as these budgets' caps, so no researcher can spend another's share and the
sum cannot pass the campaign's cap; the ledger adds up the checkpointed budgets for the totals.

``to_dict()``/``from_dict()`` checkpoint the caps and the spend; budgets pickle through the same
dicts.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from typing import Mapping

# The four kinds of spending, as named in `Spend`, in check/charge keywords, and (with the
# constructor names below) in caps.
KINDS = ("tokens", "dollars", "experiments", "hours")
CAP_ARGUMENTS = {"tokens": "max_tokens", "dollars": "max_dollars",
                 "experiments": "max_experiments", "hours": "max_agent_hours"}
FLOAT_SLACK = 1e-9  # dollars and hours are sums of floats; don't refuse over rounding noise


@dataclass
class Spend:
    tokens: int = 0
    dollars: float = 0.0
    experiments: int = 0
    hours: float = 0.0

    def __add__(self, other: "Spend") -> "Spend":
        return Spend(**{kind: getattr(self, kind) + getattr(other, kind) for kind in KINDS})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Spend":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class BudgetExceeded(Exception):
    """An action would take `used` + `requested` past `cap` for the kind `which` (tokens,
    dollars, experiments or hours) of the budget `scope` (a researcher's name or the campaign's)."""

    def __init__(self, which: str, used: float, cap: float, requested: float = 0, scope: str = "budget"):
        self.which = which
        self.used = used
        self.cap = cap
        self.requested = requested
        self.scope = scope
        super().__init__(f"{scope}: {which} budget exceeded: used {_fmt(used)} + requested "
                         f"{_fmt(requested)} > cap {_fmt(cap)}")

    def __reduce__(self):  # keep all fields through pickling (Ray ships exceptions between workers)
        return (self.__class__, (self.which, self.used, self.cap, self.requested, self.scope))


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _spend(tokens: int = 0, dollars: float = 0.0, experiments: int = 0, hours: float = 0.0) -> Spend:
    amounts = Spend(tokens, dollars, experiments, hours)
    if any(getattr(amounts, kind) < 0 for kind in KINDS):
        raise ValueError(f"spending amounts must be non-negative, got {amounts}")
    return amounts


class Budget:
    """Caps (None: unlimited) and the spend so far, for one researcher or one campaign."""

    def __init__(self, max_tokens: int | None = None, max_dollars: float | None = None,
                 max_experiments: int | None = None, max_agent_hours: float | None = None,
                 name: str = "budget"):
        self.name = name
        self.caps: dict[str, float | None] = {"tokens": max_tokens, "dollars": max_dollars,
                                              "experiments": max_experiments, "hours": max_agent_hours}
        self._spent = Spend()
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        caps = ", ".join(f"{CAP_ARGUMENTS[k]}={v}" for k, v in self.caps.items() if v is not None)
        return f"Budget({self.name!r}, {caps or 'unlimited'}, spent={self.spent})"

    # -- reading -----------------------------------------------------------------------------
    @property
    def spent(self) -> Spend:
        """What has been charged so far."""
        with self._lock:
            return Spend(**asdict(self._spent))

    def remaining(self) -> dict[str, float | None]:
        """Per kind, how much is left under the cap (never negative); None where uncapped."""
        spent = self.spent
        return {kind: None if cap is None else max(0, cap - getattr(spent, kind))
                for kind, cap in self.caps.items()}

    def exhausted(self) -> str | None:
        """The first kind whose cap has been reached, or None."""
        spent = self.spent
        for kind, cap in self.caps.items():
            if cap is not None and getattr(spent, kind) >= cap - FLOAT_SLACK:
                return kind
        return None

    # -- spending ----------------------------------------------------------------------------
    def check(self, tokens: int = 0, dollars: float = 0.0, experiments: int = 0,
              hours: float = 0.0) -> None:
        """Raise `BudgetExceeded` if spending this much more would pass a cap."""
        with self._lock:
            self._check_locked(_spend(tokens, dollars, experiments, hours))

    def charge(self, tokens: int = 0, dollars: float = 0.0, experiments: int = 0,
               hours: float = 0.0) -> Spend:
        """Record an actual cost; returns the spend so far."""
        amounts = _spend(tokens, dollars, experiments, hours)
        with self._lock:
            self._spent = self._spent + amounts
            return self.spent

    def _check_locked(self, amounts: Spend) -> None:
        spent = self.spent
        for kind, cap in self.caps.items():
            if cap is None:
                continue
            used, requested = getattr(spent, kind), getattr(amounts, kind)
            if used + requested > cap + FLOAT_SLACK:
                raise BudgetExceeded(kind, used, cap, requested, self.name)

    # -- checkpointing -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        with self._lock:
            return {"name": self.name,
                    "caps": {CAP_ARGUMENTS[k]: v for k, v in self.caps.items()},
                    "spent": self._spent.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Budget":
        budget = cls(name=data.get("name", "budget"), **dict(data.get("caps") or {}))
        budget._spent = Spend.from_dict(data.get("spent") or {})
        return budget

    def __getstate__(self) -> dict:
        return self.to_dict()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(Budget.from_dict(state).__dict__)
