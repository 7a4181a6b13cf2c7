"""Tracking: every experiment is an MLflow run; the leaderboard is a query over those runs.

The store is `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///<home>/mlflow.db`
in the aar home (artifacts beside it in `<home>/mlartifacts/`), never the working directory: a
Ray job's working directory is a temporary copy. `aar ui` opens the MLflow UI on it.
When the store cannot be reached (a tracking server restarting), an experiment's record is
spooled to disk and written on a later call, so a campaign never stops or loses a record for it.
A command that is interrupted ends the runs it left RUNNING as KILLED (`mark_killed`); a later
record under the same key replaces such a run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"


# Runs in these states were cut off (a store that went down mid-write, an interrupted command):
# a record under the same key replaces them instead of being dropped as a duplicate.
CUT_OFF = ("RUNNING", "KILLED")


def resolve_tracking_uri(uri: str | None = None, home: str | None = None) -> str:
    """`uri`, else `$MLFLOW_TRACKING_URI`, else the home's sqlite store (`home` empty: the
    default home, `$AAR_HOME` or `~/.aar`)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from aar_ray.config import resolve_home

    return f"sqlite:///{Path(resolve_home(home)) / DEFAULT_DB}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _artifact_root(uri: str) -> str | None:
    """A sqlite store keeps its artifacts next to the database file; servers choose their own."""
    path = _sqlite_path(uri)
    return (path.parent / "mlartifacts").as_uri() if path else None


def _default_spool(uri: str) -> Path:
    """Beside a sqlite store (the home's, by default); for a server, in the default home."""
    from aar_ray.config import resolve_home

    path = _sqlite_path(uri)
    return (path.parent if path else Path(resolve_home())) / "tracking-spool"


class Tracker:
    """Small verbs over MlflowClient: one experiment per sweep or campaign, one run per experiment."""

    def __init__(self, uri: str | None, experiment: str, spool_dir: str | Path | None = None):
        self.uri = resolve_tracking_uri(uri)
        if self.uri.startswith("http"):
            # Fail over to the spool within seconds instead of MLflow's minutes of backoff.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = MlflowClient(self.uri)
        self.spool = Path(spool_dir or _default_spool(self.uri)).resolve() / experiment
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else \
            self.client.create_experiment(experiment, artifact_location=_artifact_root(self.uri))
        self.experiment = experiment

    def log_experiment(self, run_name: str, params: dict, metrics: dict, tags: dict,
                       predictions: pd.DataFrame | None = None, config: dict | None = None,
                       code: str | None = None, parent_run_id: str | None = None) -> str:
        """One finished experiment as one MLflow run; returns its run id, or `pending:<id>`
        when the store is unreachable and the record went to the spool."""
        record = {"run_name": run_name, "params": params, "metrics": metrics, "tags": tags,
                  "predictions": None if predictions is None else predictions.to_dict("list"),
                  "config": config, "code": code, "parent_run_id": parent_run_id}
        self.flush_spool()
        try:
            return self._write(**record)
        except Exception:  # the store is down or unreachable: keep the record, write it later
            return self._to_spool(record)

    def _to_spool(self, record: dict) -> str:
        self.spool.mkdir(parents=True, exist_ok=True)
        name = f"{time.time():.6f}-{uuid.uuid4().hex[:8]}"
        tmp = self.spool / f".{name}"
        tmp.write_text(json.dumps(record, default=str))
        tmp.rename(self.spool / f"{name}.json")
        return f"pending:{name}"

    def flush_spool(self) -> int:
        """Write spooled records, oldest first; stops at the first failure. Returns how many
        were written (a record whose key is already in the store is dropped, not repeated)."""
        written = 0
        for path in sorted(self.spool.glob("*.json")) if self.spool.exists() else []:
            record = json.loads(path.read_text())
            try:
                key = record["tags"].get("aar_key")
                if not (key and self.find_run(key, raise_errors=True)):
                    self._write(**record)
            except Exception:
                break
            path.unlink()
            written += 1
        return written

    def _write(self, run_name: str, params: dict, metrics: dict, tags: dict, predictions=None,
               config: dict | None = None, code: str | None = None, parent_run_id: str | None = None) -> str:
        if predictions is not None and not isinstance(predictions, pd.DataFrame):
            predictions = pd.DataFrame(predictions)
        all_tags = {**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={k: str(v) for k, v in all_tags.items()})
        try:
            self._log_contents(run.info.run_id, params, metrics, predictions, config, code)
        except MlflowException as err:
            # The store refused part of the record (a value it cannot hold): the run still ends,
            # FAILED and saying why, with whatever was written; it never stays RUNNING.
            log.warning("experiment %s: MLflow refused part of its record: %s", run_name, err)
            self.client.set_tag(run.info.run_id, "record_error", str(err)[:4000])
            self.client.set_terminated(run.info.run_id, "FAILED")
            return run.info.run_id
        self.client.set_terminated(run.info.run_id, "FINISHED" if metrics.get("pgr") is not None else "FAILED")
        return run.info.run_id

    def _log_contents(self, run_id: str, params: dict, metrics: dict, predictions, config, code) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])
        with tempfile.TemporaryDirectory() as tmp:
            if predictions is not None:
                predictions.to_parquet(Path(tmp) / "predictions.parquet", index=False)
                self.client.log_artifact(run_id, str(Path(tmp) / "predictions.parquet"))
            if code is not None:
                (Path(tmp) / "idea.py").write_text(code)
                self.client.log_artifact(run_id, str(Path(tmp) / "idea.py"))
            if config is not None:
                (Path(tmp) / "config.json").write_text(json.dumps(config, indent=2, default=str))
                self.client.log_artifact(run_id, str(Path(tmp) / "config.json"))

    def find_run(self, key: str, raise_errors: bool = False) -> str | None:
        """The id of the run recorded under an experiment key, if any (None also when the store
        cannot be reached, unless raise_errors)."""
        try:
            found = self.client.search_runs([self.experiment_id], f"tags.aar_key = '{key}'", max_results=1)
            if found and found[0].info.status in CUT_OFF:
                # A record cut off half-way (the store went down mid-write, the command was
                # interrupted): replace it, so the record is written in full, not dropped.
                self.client.delete_run(found[0].info.run_id)
                return None
        except Exception:
            if raise_errors:
                raise
            return None
        return found[0].info.run_id if found else None

    def add_flag(self, run_id: str, flag: str) -> None:
        """Append a flag to a recorded run's `flags` tag (the tag the scorer's flags go in)."""
        current = self.client.get_run(run_id).data.tags.get("flags", "")
        flags = [f for f in current.split(",") if f]
        if flag not in flags:
            self.client.set_tag(run_id, "flags", ",".join([*flags, flag]))

    def start_parent(self, run_name: str, params: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name)
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def finish_parent(self, run_id: str, artifacts: list[Path] = ()) -> None:
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")

    def reopen_parent(self, run_id: str) -> None:
        """A resumed sweep or campaign: its parent run is RUNNING again until it finishes."""
        self.client.update_run(run_id, status="RUNNING")

    def mark_killed(self, since: float, run_ids: list[str] = ()) -> int:
        """End as KILLED the runs an interrupted command left RUNNING: this experiment's runs
        started at or after `since` (epoch seconds) and the given ones. Returns how many."""
        since_ms = int(since * 1000)
        running = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'",
                                          max_results=10000)
        ids = {r.info.run_id for r in running if r.info.start_time >= since_ms}
        ids |= {r.info.run_id for r in running if r.info.run_id in set(run_ids)}
        for run_id in ids:
            self.client.set_terminated(run_id, "KILLED")
        return len(ids)

    def runs(self, parent_run_id: str | None = None) -> pd.DataFrame:
        """Experiment runs of this experiment (of one sweep when parent_run_id is given)."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        query = "tags.aar_kind = 'experiment'"
        if parent_run_id:
            query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
        return mlflow.search_runs([self.experiment_id], filter_string=query, output_format="pandas")


def leaderboard(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd of validation PGR per testbed and method, best first within each testbed."""
    if runs.empty or "metrics.pgr" not in runs:
        return pd.DataFrame(columns=["testbed", "method", "seeds", "pgr_mean", "pgr_sd",
                                     "transfer_acc", "weak_acc", "strong_acc"])
    # A (testbed, method, seed) run again replaces its earlier result rather than adding a seed.
    scored = runs.dropna(subset=["metrics.pgr"]).sort_values("start_time").drop_duplicates(
        ["params.testbed", "params.method", "params.seed"], keep="last")
    table = scored.groupby(["params.testbed", "params.method"]).agg(
        seeds=("metrics.pgr", "size"), pgr_mean=("metrics.pgr", "mean"),
        pgr_sd=("metrics.pgr", lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else 0.0),
        transfer_acc=("metrics.transfer_acc", "mean"), weak_acc=("metrics.weak_acc", "mean"),
        strong_acc=("metrics.strong_acc", "mean")).reset_index()
    table = table.rename(columns={"params.testbed": "testbed", "params.method": "method"})
    return table.sort_values(["testbed", "pgr_mean"], ascending=[True, False]).reset_index(drop=True)


def format_leaderboard(table: pd.DataFrame) -> str:
    lines = [f"{'testbed':<12} {'method':<34} {'seeds':>5} {'PGR mean ± sd':>15} {'transfer':>8} "
             f"{'weak':>6} {'strong':>6}"]
    for row in table.itertuples():
        lines.append(f"{row.testbed:<12} {row.method:<34} {row.seeds:>5} "
                     f"{row.pgr_mean:>7.2f} ± {row.pgr_sd:<5.2f} {row.transfer_acc:>8.3f} "
                     f"{row.weak_acc:>6.2f} {row.strong_acc:>6.2f}")
    return "\n".join(lines)


def plot_leaderboard(table: pd.DataFrame, path: Path) -> Path:
    """Horizontal bars of mean PGR ± sd, one panel per testbed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    testbeds = sorted(table["testbed"].unique())
    fig, axes = plt.subplots(1, max(1, len(testbeds)), figsize=(5 * max(1, len(testbeds)), 3.5),
                             squeeze=False)
    for ax, testbed in zip(axes[0], testbeds):
        part = table[table["testbed"] == testbed].sort_values("pgr_mean")
        ax.barh(part["method"], part["pgr_mean"], xerr=part["pgr_sd"], color="#4878a8")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(testbed)
        ax.set_xlabel("PGR (validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
