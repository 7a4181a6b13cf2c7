"""Spending limits for researchers and for a whole campaign: tokens, dollars, experiments and
agent-hours.

A `Budget` has optional caps and counts what has been spent (`Spend`). Money is guarded
*before* it is spent: ``check(...)`` raises `BudgetExceeded` (naming the cap, what was used and the
cap) when the estimated cost of the next action would take the spend past a cap, and
``charge(...)`` records the actual cost afterwards. Charging never refuses: the money is gone, and
the overshoot shows up as an exhausted budget on the next check.

When several threads share a budget, check-then-charge can let two calls through that together
pass a cap. ``reserve(...)`` closes that gap: it checks and holds the estimate atomically (held
amounts count as spent for later checks), and ``settle(hold, ...)`` swaps the hold for the actual
cost, or ``release(hold)`` drops it when the call failed. `BudgetedBackend` in
`aar_ray.agents.backends` uses this for every model call.

A `CampaignBudget` holds one `Budget` per researcher plus the campaign's own caps: an action by a
researcher must pass both its own caps and the campaign's, and its cost is charged to both, so
the campaign's spend is the sum over researchers (plus anything charged to the campaign alone).
``for_researcher(name)`` gives a researcher a view with the same methods as a `Budget`.

Everything is thread-safe, and ``to_dict()``/``from_dict()`` checkpoint the caps and the spend
(not in-flight holds: a call that was running when the checkpoint was taken is not charged after
a restore). Budgets pickle through the same dicts, so they can be passed to Ray actors; note that
a copy in another process is a separate budget: to share one campaign budget across researcher
actors, serve the `CampaignBudget` from a single actor (its methods take plain values and return
plain values and hold ids, so they work through actor calls).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

# The four kinds of spending, as named in `Spend`, in check/charge keywords, and (with the
# constructor names below) in caps.
KINDS = ("tokens", "dollars", "experiments", "hours")
CAP_ARGUMENTS = {"tokens": "max_tokens", "dollars": "max_dollars",
                 "experiments": "max_experiments", "hours": "max_agent_hours"}
_FLOAT_SLACK = 1e-9  # dollars and hours are sums of floats; don't refuse over rounding noise


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
        self._holds: dict[str, Spend] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        caps = ", ".join(f"{CAP_ARGUMENTS[k]}={v}" for k, v in self.caps.items() if v is not None)
        return f"Budget({self.name!r}, {caps or 'unlimited'}, spent={self.spent})"

    # -- reading -----------------------------------------------------------------------------
    @property
    def spent(self) -> Spend:
        """What has been charged (not counting holds)."""
        with self._lock:
            return Spend(**asdict(self._spent))

    def committed(self) -> Spend:
        """Charged plus held: what a check compares against the caps."""
        with self._lock:
            total = Spend(**asdict(self._spent))
            for held in self._holds.values():
                total = total + held
            return total

    def remaining(self) -> dict[str, float | None]:
        """Per kind, how much is left under the cap (never negative); None where uncapped."""
        committed = self.committed()
        return {kind: None if cap is None else max(0, cap - getattr(committed, kind))
                for kind, cap in self.caps.items()}

    def exhausted(self) -> str | None:
        """The first kind whose cap has been reached, or None."""
        spent = self.spent
        for kind, cap in self.caps.items():
            if cap is not None and getattr(spent, kind) >= cap - _FLOAT_SLACK:
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

    def reserve(self, tokens: int = 0, dollars: float = 0.0, experiments: int = 0,
                hours: float = 0.0) -> str:
        """Check and hold an estimate in one step; returns the hold's id for `settle`/`release`."""
        amounts = _spend(tokens, dollars, experiments, hours)
        with self._lock:
            self._check_locked(amounts)
            hold_id = uuid.uuid4().hex
            self._holds[hold_id] = amounts
            return hold_id

    def settle(self, hold_id: str, tokens: int = 0, dollars: float = 0.0, experiments: int = 0,
               hours: float = 0.0) -> Spend:
        """Replace a hold by the actual cost of the action it was for."""
        amounts = _spend(tokens, dollars, experiments, hours)
        with self._lock:
            if self._holds.pop(hold_id, None) is None:
                raise KeyError(f"{self.name}: no hold {hold_id!r} (settled or released already?)")
            self._spent = self._spent + amounts
            return self.spent

    def release(self, hold_id: str) -> None:
        """Drop a hold without charging (the action failed before costing anything)."""
        with self._lock:
            self._holds.pop(hold_id, None)

    def _check_locked(self, amounts: Spend) -> None:
        committed = self.committed()
        for kind, cap in self.caps.items():
            if cap is None:
                continue
            used, requested = getattr(committed, kind), getattr(amounts, kind)
            if used + requested > cap + _FLOAT_SLACK:
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


class CampaignBudget:
    """The campaign's caps over the sum of its researchers' spending, plus each researcher's own.

    `per_researcher` gives default caps (``{"max_dollars": 50, ...}``) for researchers added
    without their own. ``researcher=None`` in `check`/`charge`/`reserve` means an action paid by
    the campaign alone (e.g. the final holdout re-runs)."""

    def __init__(self, max_tokens: int | None = None, max_dollars: float | None = None,
                 max_experiments: int | None = None, max_agent_hours: float | None = None,
                 per_researcher: Mapping[str, Any] | None = None, name: str = "campaign"):
        self.total = Budget(max_tokens, max_dollars, max_experiments, max_agent_hours, name=name)
        self.per_researcher = dict(per_researcher or {})
        self._researchers: dict[str, Budget] = {}
        self._holds: dict[str, tuple[str | None, str | None, str]] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"CampaignBudget({self.total!r}, researchers={sorted(self._researchers)})"

    # -- researchers -------------------------------------------------------------------------
    def add_researcher(self, name: str, budget: Budget | None = None, **caps) -> Budget:
        """Register a researcher with `budget`, or caps given as keywords, or the defaults."""
        with self._lock:
            if name in self._researchers:
                raise ValueError(f"researcher {name!r} already has a budget")
            if budget is None:
                budget = Budget(name=name, **{**self.per_researcher, **caps})
            self._researchers[name] = budget
            return budget

    def researcher_budget(self, name: str) -> Budget:
        with self._lock:
            if name not in self._researchers:
                raise KeyError(f"no budget for researcher {name!r}; add_researcher() it first "
                               f"(known: {', '.join(sorted(self._researchers)) or 'none'})")
            return self._researchers[name]

    @property
    def researchers(self) -> list[str]:
        with self._lock:
            return sorted(self._researchers)

    def for_researcher(self, name: str) -> "ResearcherBudget":
        self.researcher_budget(name)  # fail now, not at the first call, on an unknown name
        return ResearcherBudget(self, name)

    # -- reading -----------------------------------------------------------------------------
    @property
    def spent(self) -> Spend:
        return self.total.spent

    def spend_by_researcher(self) -> dict[str, Spend]:
        with self._lock:
            return {name: budget.spent for name, budget in sorted(self._researchers.items())}

    def exhausted(self, researcher: str | None = None) -> str | None:
        """The first exhausted kind of the campaign, else of `researcher`'s budget, else None."""
        with self._lock:
            return self.total.exhausted() or (
                self.researcher_budget(researcher).exhausted() if researcher else None)

    # -- spending ----------------------------------------------------------------------------
    def check(self, researcher: str | None, tokens: int = 0, dollars: float = 0.0,
              experiments: int = 0, hours: float = 0.0) -> None:
        amounts = dict(tokens=tokens, dollars=dollars, experiments=experiments, hours=hours)
        with self._lock:
            if researcher is not None:
                self.researcher_budget(researcher).check(**amounts)
            self.total.check(**amounts)

    def charge(self, researcher: str | None, tokens: int = 0, dollars: float = 0.0,
               experiments: int = 0, hours: float = 0.0) -> Spend:
        """Charge the researcher (if any) and the campaign; returns the campaign's spend."""
        amounts = dict(tokens=tokens, dollars=dollars, experiments=experiments, hours=hours)
        with self._lock:
            if researcher is not None:
                self.researcher_budget(researcher).charge(**amounts)
            return self.total.charge(**amounts)

    def reserve(self, researcher: str | None, tokens: int = 0, dollars: float = 0.0,
                experiments: int = 0, hours: float = 0.0) -> str:
        """Hold an estimate against both the researcher's and the campaign's caps, atomically."""
        amounts = dict(tokens=tokens, dollars=dollars, experiments=experiments, hours=hours)
        with self._lock:
            own = self.researcher_budget(researcher) if researcher is not None else None
            own_hold = own.reserve(**amounts) if own is not None else None
            try:
                campaign_hold = self.total.reserve(**amounts)
            except BudgetExceeded:
                if own is not None:
                    own.release(own_hold)
                raise
            hold_id = uuid.uuid4().hex
            self._holds[hold_id] = (researcher, own_hold, campaign_hold)
            return hold_id

    def settle(self, hold_id: str, tokens: int = 0, dollars: float = 0.0, experiments: int = 0,
               hours: float = 0.0) -> Spend:
        amounts = dict(tokens=tokens, dollars=dollars, experiments=experiments, hours=hours)
        with self._lock:
            researcher, own_hold, campaign_hold = self._pop_hold(hold_id)
            if researcher is not None:
                self.researcher_budget(researcher).settle(own_hold, **amounts)
            return self.total.settle(campaign_hold, **amounts)

    def release(self, hold_id: str) -> None:
        with self._lock:
            if hold_id not in self._holds:
                return
            researcher, own_hold, campaign_hold = self._pop_hold(hold_id)
            if researcher is not None:
                self.researcher_budget(researcher).release(own_hold)
            self.total.release(campaign_hold)

    def _pop_hold(self, hold_id: str) -> tuple[str | None, str | None, str]:
        if hold_id not in self._holds:
            raise KeyError(f"campaign: no hold {hold_id!r} (settled or released already?)")
        return self._holds.pop(hold_id)

    # -- checkpointing -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        with self._lock:
            return {"campaign": self.total.to_dict(), "per_researcher": dict(self.per_researcher),
                    "researchers": {name: b.to_dict() for name, b in self._researchers.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "CampaignBudget":
        campaign = cls(per_researcher=data.get("per_researcher"))
        campaign.total = Budget.from_dict(data["campaign"])
        for name, budget in (data.get("researchers") or {}).items():
            campaign._researchers[name] = Budget.from_dict(budget)
        return campaign

    def __getstate__(self) -> dict:
        return self.to_dict()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(CampaignBudget.from_dict(state).__dict__)


class ResearcherBudget:
    """One researcher's side of a `CampaignBudget`: Budget-like methods that check and charge
    both the researcher's caps and the campaign's."""

    def __init__(self, campaign: CampaignBudget, researcher: str):
        self.campaign = campaign
        self.researcher = researcher

    def __repr__(self) -> str:
        return f"ResearcherBudget({self.researcher!r})"

    @property
    def spent(self) -> Spend:
        return self.campaign.researcher_budget(self.researcher).spent

    def remaining(self) -> dict[str, float | None]:
        """Per kind, the smaller of what is left to the researcher and to the campaign."""
        own = self.campaign.researcher_budget(self.researcher).remaining()
        campaign = self.campaign.total.remaining()
        return {kind: _smaller(own[kind], campaign[kind]) for kind in KINDS}

    def exhausted(self) -> str | None:
        return self.campaign.exhausted(self.researcher)

    def check(self, **amounts) -> None:
        self.campaign.check(self.researcher, **amounts)

    def charge(self, **amounts) -> Spend:
        self.campaign.charge(self.researcher, **amounts)
        return self.spent

    def reserve(self, **amounts) -> str:
        return self.campaign.reserve(self.researcher, **amounts)

    def settle(self, hold_id: str, **amounts) -> Spend:
        self.campaign.settle(hold_id, **amounts)
        return self.spent

    def release(self, hold_id: str) -> None:
        self.campaign.release(hold_id)


def _smaller(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
