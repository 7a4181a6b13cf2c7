"""Where a campaign keeps its state: one folder of the aar home, laid out here and nowhere else.

    <home>/campaigns/<name>/
        lock.json             the running driver (lock.CampaignLock)
        control.json          run / pause / stop, for the campaign or one researcher
        mlflow_run_id         the campaign's MLflow parent run, reused on resume
        config.json           the campaign's config as it ran
        audit.json            the audit of the top ideas (audit.py)
        researchers/<name>/   each researcher's checkpoint (state.json, history) and workspace/
        report/               report.md, report.html, its plot and JSON tables (report.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "lock.json"


@dataclass(frozen=True)
class CampaignPaths:
    """The paths of campaign `name` in the aar home `home` (made absolute)."""

    home: Path
    name: str

    def __post_init__(self):
        object.__setattr__(self, "home", Path(self.home).resolve())

    @classmethod
    def of(cls, config) -> CampaignPaths:
        """The paths of a campaign config's campaign (anything with `home` and `name`)."""
        return cls(config.home, config.name)

    @property
    def campaigns(self) -> Path:
        """The folder of every campaign of the home."""
        return self.home / "campaigns"

    @property
    def root(self) -> Path:
        return self.campaigns / self.name

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def control(self) -> Path:
        return self.root / "control.json"

    @property
    def mlflow_run_id(self) -> Path:
        return self.root / "mlflow_run_id"

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def audit_json(self) -> Path:
        return self.root / "audit.json"

    @property
    def researchers(self) -> Path:
        return self.root / "researchers"

    def researcher(self, name: str) -> Path:
        """A researcher's state folder (its checkpoint; its workspace is `workspace/` in it)."""
        return self.researchers / name

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def report_html(self) -> Path:
        return self.report_dir / "report.html"

    @property
    def pgr_plot(self) -> Path:
        return self.report_dir / "pgr_over_time.png"

    @property
    def generalisation_json(self) -> Path:
        return self.report_dir / "generalisation.json"

    @property
    def cost_json(self) -> Path:
        return self.report_dir / "cost.json"

    @property
    def models_json(self) -> Path:
        return self.report_dir / "models.json"
