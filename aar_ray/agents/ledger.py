"""A campaign's budget ledger: the one place that holds the campaign's caps, hands each
researcher its share of them, adds up what the campaign has spent and says which cap is reached.
The driver (`aar_ray.campaign.run_researchers`), `researcher_configs` and `aar campaign status`
all ask it.

Spend is recorded where it happens, and the ledger reads it there rather than keeping a copy:

- each researcher's `Budget` (tokens, dollars, experiments, agent-hours), checkpointed in
  ``<campaign>/researchers/<name>/state.json`` after every turn (`aar_ray.agents.checkpoint`);
- GPU time: each experiment's ``gpu_seconds`` in the forum's results (task hours x GPUs held).

The caps are the campaign's limits (`CampaignLimits`): ``dollars``, ``agent_hours`` and
``gpu_hours``, each None for uncapped (``wall_seconds`` is the driver's deadline, not spend).
Dollars and agent-hours, which a researcher's own `Budget` checks before every call, are enforced
as per-researcher shares handed out by a share policy (`EqualShares`, the default): since each
share is checked before it is spent and the shares add up to at most the cap, the campaign's total
cannot pass it. GPU-hours are known only after an experiment ran, so the driver asks `exhausted()`
between waits and stops the researchers once it names a cap.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Protocol

from aar_ray.agents.budget import FLOAT_SLACK, Spend
from aar_ray.agents.checkpoint import STATE_NAME

if TYPE_CHECKING:
    from aar_ray.agents.researcher import ResearcherLimits
    from aar_ray.forum import Result

# The campaign's caps, in the order `exhausted()` names them.
CAPS = ("dollars", "agent_hours", "gpu_hours")
# The caps a share policy splits, and the researcher limit each share becomes.
SHARED = {"dollars": "max_dollars", "agent_hours": "max_agent_hours"}


@dataclass(frozen=True)
class CampaignSpend:
    """What a whole campaign has spent: its researchers' budgets added up, and GPU-hours."""
    tokens: int = 0
    dollars: float = 0.0
    experiments: int = 0
    agent_hours: float = 0.0
    gpu_hours: float = 0.0

    def to_dict(self, digits: int = 4) -> dict:
        return {k: round(v, digits) if isinstance(v, float) else v for k, v in asdict(self).items()}


class SharePolicy(Protocol):
    """How the campaign's shared caps become each researcher's limits. A policy must keep the
    shares of each capped kind adding up to at most the campaign's cap."""
    name: str

    def shares(self, caps: Mapping[str, float | None], own: ResearcherLimits,
               researchers: int) -> list[ResearcherLimits]: ...


class EqualShares:
    """Each researcher may spend cap / researchers of the campaign's dollars and agent-hours; a
    smaller cap of its own (`researcher_limits`) wins."""
    name = "equal"

    def shares(self, caps: Mapping[str, float | None], own: ResearcherLimits,
               researchers: int) -> list[ResearcherLimits]:
        n = max(1, researchers)
        changes = {}
        for cap, limit in SHARED.items():
            total = caps.get(cap)
            if total is not None:
                share = total / n
                mine = getattr(own, limit)
                changes[limit] = share if mine is None else min(mine, share)
        return [dataclasses.replace(own, **changes) for _ in range(n)]


EQUAL_SHARES = EqualShares()


def read_states(researchers_dir: str | Path) -> dict[str, dict]:
    """Each researcher's checkpointed state (``<name>/state.json``), by name, sorted; read only."""
    return {path.parent.name: json.loads(path.read_text())
            for path in sorted(Path(researchers_dir).glob(f"*/{STATE_NAME}"))}


def researcher_spend(state: Mapping) -> Spend:
    """The spend in one researcher's checkpointed state."""
    return Spend.from_dict((state.get("budget") or {}).get("spent") or {})


class CampaignLedger:
    """One campaign's caps and spend. `caps` maps cap names (`CAPS`) to a number or None; other
    keys (``wall_seconds``) are ignored. `forum` is anything with ``results()`` (the campaign's
    `Forum`); without one no GPU time is counted."""

    def __init__(self, caps: Mapping[str, float | None], researchers: int, researchers_dir: str | Path,
                 forum=None, policy: SharePolicy = EQUAL_SHARES):
        self.caps: dict[str, float | None] = {cap: caps.get(cap) for cap in CAPS}
        self.researchers = researchers
        self.researchers_dir = Path(researchers_dir)
        self.forum = forum
        self.policy = policy

    def __repr__(self) -> str:
        caps = ", ".join(f"{k}={v}" for k, v in self.caps.items() if v is not None)
        return f"CampaignLedger({caps or 'uncapped'}, {self.researchers} researchers, {self.policy.name} shares)"

    def shares(self, own: ResearcherLimits) -> list[ResearcherLimits]:
        """Each researcher's limits: its own (`own`) with its share of the campaign's caps."""
        return self.policy.shares(self.caps, own, self.researchers)

    def spent(self, results: Iterable[Result] | None = None) -> CampaignSpend:
        """The campaign's totals, read from the researchers' checkpoints and the forum's results
        (pass `results` when they were just read, to save a query)."""
        total = Spend()
        for state in read_states(self.researchers_dir).values():
            total = total + researcher_spend(state)
        if results is None:
            results = self.forum.results() if self.forum is not None else []
        gpu_seconds = sum(r.gpu_seconds or 0.0 for r in results)
        return CampaignSpend(tokens=total.tokens, dollars=total.dollars, experiments=total.experiments,
                             agent_hours=total.hours, gpu_hours=gpu_seconds / 3600)

    def exhausted(self, spent: CampaignSpend | None = None) -> str | None:
        """The first campaign cap that has been reached (``dollars``, ``agent_hours`` or
        ``gpu_hours``), or None. `spent`: the totals when just read."""
        spent = self.spent() if spent is None else spent
        for cap, limit in self.caps.items():
            if limit is not None and getattr(spent, cap) >= limit - FLOAT_SLACK:
                return cap
        return None

    def totals(self, results: Iterable | None = None) -> dict:
        """The campaign's spend against its caps, as `aar campaign status` prints it."""
        spent = self.spent(results)
        return {**spent.to_dict(), "caps": dict(self.caps), "exhausted": self.exhausted(spent)}
