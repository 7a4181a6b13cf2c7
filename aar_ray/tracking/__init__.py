"""Tracking: every experiment is an MLflow run; the leaderboard is a query over those runs.

The store is `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///<home>/mlflow.db`
in the aar home (artifacts beside it in `<home>/mlartifacts/`), never the working directory: a
Ray job's working directory is a temporary copy. `aar ui` opens the MLflow UI on it.
When the store cannot be reached (a tracking server restarting), an experiment's record is
spooled to disk and written on a later call, so a campaign never stops or loses a record for it.
A command that is interrupted ends the runs it left RUNNING as KILLED (`mark_killed`); a later
record under the same key replaces such a run.

What a person sees first in the MLflow UI (its "Model training" runs table, not the GenAI
overview): experiments are tagged `mlflow.experimentKind=custom_model_development` and carry a
shared view (`results_url`) whose columns are the PGR summaries; parent runs (a sweep, a campaign,
each researcher of a campaign) carry summary metrics and say their best PGR in their name;
experiment runs are named researcher/idea/testbed/split/seed, uniquely; every run carries the
code version (`mlflow.source.git.commit`, a content hash of the package without git) and the
command that made it (`mlflow.source.name`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from aar_ray import environment
from aar_ray.home import resolve_home

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
    if environment.mlflow_tracking_uri():
        return environment.mlflow_tracking_uri()
    return f"sqlite:///{Path(resolve_home(home)) / DEFAULT_DB}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _artifact_root(uri: str) -> str | None:
    """A sqlite store keeps its artifacts next to the database file; servers choose their own."""
    path = _sqlite_path(uri)
    return (path.parent / "mlartifacts").as_uri() if path else None


def _default_spool(uri: str) -> Path:
    """Beside a sqlite store (the home's, by default); for a server, in the default home."""
    path = _sqlite_path(uri)
    return (path.parent if path else Path(resolve_home())) / "tracking-spool"


PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# The MLflow UI opens an experiment on its GenAI overview unless told it is model development.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
RESULTS_VIEW = "aar-results"  # the shared view `results_url` opens
# Columns of that view: the PGR summaries parent runs carry and each experiment's own PGR. Few,
# so that all are on screen: the UI draws only the columns in view (cost is in the run's page).
SUMMARY_COLUMNS = ("best_validation_pgr", "mean_validation_pgr", "pgr", "winner_holdout_pgr")
SOURCE_NAME = "mlflow.source.name"
BEST_IN_NAME = re.compile(r"^PGR -?\d+\.\d+ · ")  # how a parent run's name starts once it has a best
SOURCE_COMMIT = "mlflow.source.git.commit"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_ROOT.parent), *args], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """Which code made a run: the git commit, else (a Ray job's copy, a wheel) a content hash of
    the package's sources; `aar_code_hash` always, since a commit says nothing of local edits."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode() + b"\0" + path.read_bytes())
    code_hash = digest.hexdigest()[:16]
    commit = _git("rev-parse", "HEAD")
    tags = {SOURCE_COMMIT: commit or f"content-{code_hash}", "aar_code_hash": code_hash}
    if commit and _git("status", "--porcelain", "--", str(PACKAGE_ROOT)):
        tags["aar_code_dirty"] = "true"  # the package differs from the commit: the hash tells which
    return tags


def entry_point(argv: list[str] | None = None) -> str:
    """The command a run came from: the program and its subcommand (`aar campaign`,
    `jobs/campaign.py`), without options or overrides."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0]).name if argv else "python"
    if program.endswith(".py") and len(Path(argv[0]).parts) > 1:
        program = "/".join(Path(argv[0]).parts[-2:])  # jobs/campaign.py, not just campaign.py
    words = [program] + [a for a in argv[1:2] if a and not a.startswith("-") and "=" not in a]
    return " ".join(words)


def _filter_value(text: str) -> str | None:
    """`text` for an MLflow filter string, or None when it cannot be quoted there."""
    return None if "'" in text or "\\" in text else text


class Tracker:
    """Small verbs over MlflowClient: one experiment per sweep or campaign, one run per experiment."""

    def __init__(self, uri: str | None, experiment: str, spool_dir: str | Path | None = None):
        self.uri = resolve_tracking_uri(uri)
        self.client = MlflowClient(self.uri)
        self.spool = Path(spool_dir or _default_spool(self.uri)).resolve() / experiment
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else \
            self.client.create_experiment(experiment, artifact_location=_artifact_root(self.uri),
                                          tags=EXPERIMENT_KIND)
        if found and found.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
            self.client.set_experiment_tag(self.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        self.experiment = experiment
        self._sources: dict[str, dict] = {}  # parent run id -> the source tags its children share
        self._publish_results_view()

    def _publish_results_view(self) -> None:
        """The shared view `results_url` opens: the runs table with PGR summaries as columns,
        parent runs (best PGR) first."""
        columns = [f"metrics.`{name}`" for name in SUMMARY_COLUMNS]
        view = {"selectedColumns": columns, "orderByKey": "metrics.`best_validation_pgr`",
                "orderByAsc": False}
        self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{RESULTS_VIEW}",
                                       json.dumps(view))

    def results_url(self, base_url: str) -> str:
        """The link to open this experiment on: the runs table with PGR shown (the UI's own
        default is a GenAI overview, and a runs table without metric columns)."""
        return _view_link(base_url, self.experiment_id)

    def _reachable(self) -> bool:
        """A tracking server answers its health check within seconds. Asked before each write,
        so a server that is down costs one short request, not MLflow's minutes of retries."""
        if not self.uri.startswith("http"):
            return True
        import requests

        try:
            return requests.get(f"{self.uri.rstrip('/')}/health", timeout=5).ok
        except requests.RequestException:
            return False

    def source_tags(self, parent_run_id: str | None = None) -> dict[str, str]:
        """Code version and entry point for a new run. A child run takes its parent's entry
        point: a researcher's runs are written from a Ray worker, whose command line is Ray's."""
        tags = {**code_version(), SOURCE_NAME: entry_point()}
        if parent_run_id:
            if parent_run_id not in self._sources:
                parent = self.client.get_run(parent_run_id).data.tags
                self._sources[parent_run_id] = {k: parent[k] for k in (SOURCE_NAME,) if k in parent}
            tags.update(self._sources[parent_run_id])
        return tags

    def unique_name(self, name: str) -> str:
        """`name`, or `name (2)`, `(3)`, ... when a run of this experiment already has it."""
        quoted = _filter_value(name)
        if quoted is None:
            return name
        taken = {r.info.run_name for r in self.client.search_runs(
            [self.experiment_id], f"attributes.run_name LIKE '{quoted}%'", max_results=1000)}
        if name not in taken:
            return name
        return next(f"{name} ({n})" for n in range(2, len(taken) + 3) if f"{name} ({n})" not in taken)

    def log_experiment(self, run_name: str, params: dict, metrics: dict, tags: dict,
                       predictions: pd.DataFrame | None = None, config: dict | None = None,
                       code: str | None = None, parent_run_id: str | None = None) -> str:
        """One finished experiment as one MLflow run; returns its run id, or `pending:<id>`
        when the store is unreachable and the record went to the spool."""
        record = {"run_name": run_name, "params": params, "metrics": metrics, "tags": tags,
                  "predictions": None if predictions is None else predictions.to_dict("list"),
                  "config": config, "code": code, "parent_run_id": parent_run_id}
        self.flush_spool()
        if not self._reachable():
            return self._to_spool(record)
        try:
            return self._write(**record)
        except Exception as err:  # the store went away mid-write: keep the record, write it later
            log.warning("experiment %s: tracking store %s failed (%s: %s); spooled to %s",
                        run_name, self.uri, type(err).__name__, err, self.spool)
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
        paths = sorted(self.spool.glob("*.json")) if self.spool.exists() else []
        if paths and not self._reachable():
            return 0
        for path in paths:
            record = json.loads(path.read_text())
            try:
                key = record["tags"].get("aar_key")
                if not (key and self.find_run(key, raise_errors=True)):
                    self._write(**record)
            except Exception as err:  # still unreachable, or a record the store refuses: retried later
                log.warning("spooled record %s not written yet (%s: %s)", path.name, type(err).__name__, err)
                break
            path.unlink()
            written += 1
        return written

    def _write(self, run_name: str, params: dict, metrics: dict, tags: dict, predictions=None,
               config: dict | None = None, code: str | None = None, parent_run_id: str | None = None) -> str:
        if predictions is not None and not isinstance(predictions, pd.DataFrame):
            predictions = pd.DataFrame(predictions)
        all_tags = {**self.source_tags(parent_run_id), **tags,
                    **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        run = self.client.create_run(self.experiment_id, run_name=self.unique_name(experiment_run_name(run_name, params, tags)),
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
        except Exception as err:  # the store is unreachable: the caller runs the experiment again
            if raise_errors:
                raise
            log.warning("could not look up run %s in %s (%s: %s)", key, self.uri, type(err).__name__, err)
            return None
        return found[0].info.run_id if found else None

    def add_flag(self, run_id: str, flag: str) -> None:
        """Append a flag to a recorded run's `flags` tag (the tag the scorer's flags go in)."""
        current = self.client.get_run(run_id).data.tags.get("flags", "")
        flags = [f for f in current.split(",") if f]
        if flag not in flags:
            self.client.set_tag(run_id, "flags", ",".join([*flags, flag]))

    def annotate(self, run_ids: list[str], metrics: dict, tags: dict) -> None:
        """Add metrics and tags to recorded runs (a run still in the spool is skipped)."""
        now = int(time.time() * 1000)
        for run_id in run_ids:
            if str(run_id).startswith("pending:"):
                continue
            try:
                self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                                      tags=[RunTag(k, str(v)[:4000]) for k, v in tags.items()])
            except Exception as err:  # the store went away: the run lacks these, the experiment stands
                log.warning("could not annotate run %s (%s: %s)", run_id, type(err).__name__, err)

    def start_parent(self, run_name: str, params: dict, parent_run_id: str | None = None,
                     tags: dict | None = None) -> str:
        """A run that groups others (a sweep, a campaign, a researcher of a campaign)."""
        all_tags = {**self.source_tags(parent_run_id), "aar_kind": "parent", **(tags or {}),
                    **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        run = self.client.create_run(self.experiment_id, run_name=self.unique_name(run_name), tags=all_tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def researcher_run(self, campaign_run_id: str, researcher: str) -> str:
        """The run grouping one researcher's experiments under the campaign's run, created once
        and found again when the researcher restarts or the campaign resumes. The campaign's
        run when the store cannot be reached: the researcher's runs then sit one level higher."""
        try:
            found = self.researcher_runs(campaign_run_id).get(researcher)
            if found:
                self.reopen_parent(found)
                return found
            return self.start_parent(f"researcher {researcher}", {"researcher": researcher}, campaign_run_id,
                                     {"aar_researcher": researcher})
        except Exception as err:  # the store is down: experiments are spooled under the campaign's run
            log.warning("no MLflow run for researcher %s (%s: %s); using the campaign's", researcher,
                        type(err).__name__, err)
            return campaign_run_id

    def researcher_runs(self, campaign_run_id: str) -> dict[str, str]:
        """{researcher: run id} of the researcher runs under a campaign's run."""
        found = self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{campaign_run_id}' and tags.aar_researcher != ''",
            max_results=1000)
        return {run.data.tags["aar_researcher"]: run.info.run_id for run in found}

    def finish_parent(self, run_id: str, artifacts: list[Path] = (), summary: dict | None = None) -> None:
        """End a parent run with its summary metrics (by default, the summary of the experiment
        runs under it: best and mean validation PGR, how many) and its artifacts."""
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.log_summary(run_id, self.summarise_children(run_id) if summary is None else summary)
        self.client.set_terminated(run_id, "FINISHED")

    def log_summary(self, run_id: str, summary: dict) -> None:
        """Summary metrics on a parent run; its name then says its best PGR, so the runs table
        shows it even where no metric column is open."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, round(float(v), 4), now, 0) for k, v in summary.items() if _is_number(v)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        best = summary.get("best_validation_pgr")
        if _is_number(best):  # in front: the runs table cuts long names short
            name = BEST_IN_NAME.sub("", self.client.get_run(run_id).info.run_name)
            self.client.update_run(run_id, name=f"PGR {best:.2f} · {name}")

    def summarise_children(self, run_id: str) -> dict:
        """Validation PGR of the experiment runs directly under `run_id` (the teacher-ablation
        controls left out): the best unflagged (`best_validation_pgr_any` counts flagged runs
        too) and the mean; how many ran and failed."""
        runs = self.runs(parent_run_id=run_id)
        if runs.empty:
            return {"experiments": 0}
        scored = runs
        if "tags.split" in runs:
            scored = scored[scored["tags.split"].fillna("validation") == "validation"]
        if "tags.ablation" in runs:
            scored = scored[scored["tags.ablation"].isna()]
        scored = scored.dropna(subset=["metrics.pgr"]) if "metrics.pgr" in scored else scored.iloc[0:0]
        summary = {"experiments": len(runs), "failed_experiments": int(len(runs) - len(scored))}
        if scored.empty:
            return summary
        flags = scored["tags.flags"].fillna("") if "tags.flags" in scored else pd.Series("", index=scored.index)
        summary.update(best_validation_pgr_any=float(scored["metrics.pgr"].max()),
                       mean_validation_pgr=float(scored["metrics.pgr"].mean()))
        if (flags == "").any():
            summary["best_validation_pgr"] = float(scored.loc[flags == "", "metrics.pgr"].max())
        return summary

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
        """Experiment runs of this experiment (of one sweep when parent_run_id is given), one
        row each with `params.*`, `metrics.*`, `tags.*` columns, `run_id`, `start_time`."""
        query = "tags.aar_kind = 'experiment'"
        if parent_run_id:
            query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
        rows, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
            rows += [_run_row(run) for run in page]
            token = page.token
            if not token:
                return pd.DataFrame(rows)


def results_links(uri: str, base_url: str) -> dict[str, str]:
    """{experiment name: the link that opens it on its PGR view} for every experiment in the
    store that has the view: what `aar ui` prints."""
    client = MlflowClient(uri)
    view = f"mlflow.sharedViewState.{RESULTS_VIEW}"
    return {e.name: _view_link(base_url, e.experiment_id) for e in client.search_experiments() if view in e.tags}


def _view_link(base_url: str, experiment_id: str) -> str:
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={RESULTS_VIEW}")


def _run_row(run) -> dict:
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
            **{f"params.{k}": v for k, v in run.data.params.items()},
            **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
            **{f"tags.{k}": v for k, v in run.data.tags.items()}}


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def experiment_run_name(run_name: str, params: dict, tags: dict) -> str:
    """Who ran what, where, on which split and seed: `researcher/idea/testbed/split/seedN`
    (`[shuffled teacher]` for the ablation control). `run_name` when the parts are not known."""
    if not {"testbed", "method", "seed"} <= params.keys():
        return run_name
    who = tags.get("researcher") or tags.get("submitter") or "?"
    split = params.get("eval_split") or tags.get("split") or "validation"
    ablation = " [shuffled teacher]" if tags.get("ablation") == "shuffled_teacher" else ""
    return f"{who}/{params['method']}/{params['testbed']}/{split}/seed{params['seed']}{ablation}"


def leaderboard(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd of validation PGR per testbed and method; within each testbed the unflagged
    methods first, best first, then the flagged ones (`flags`: the scorer's flags of any seed)."""
    columns = ["testbed", "method", "seeds", "pgr_mean", "pgr_sd", "transfer_acc", "weak_acc", "strong_acc", "flags"]
    if runs.empty or "metrics.pgr" not in runs:
        return pd.DataFrame(columns=columns)
    # A (testbed, method, seed) run again replaces its earlier result rather than adding a seed.
    scored = runs.dropna(subset=["metrics.pgr"]).sort_values("start_time").drop_duplicates(
        ["params.testbed", "params.method", "params.seed"], keep="last")
    scored = scored.assign(flags=scored["tags.flags"].fillna("") if "tags.flags" in scored else "")
    table = scored.groupby(["params.testbed", "params.method"]).agg(
        seeds=("metrics.pgr", "size"), pgr_mean=("metrics.pgr", "mean"),
        pgr_sd=("metrics.pgr", lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else 0.0),
        transfer_acc=("metrics.transfer_acc", "mean"), weak_acc=("metrics.weak_acc", "mean"),
        strong_acc=("metrics.strong_acc", "mean"),
        flags=("flags", lambda s: ",".join(sorted({f for v in s for f in v.split(",") if f})))).reset_index()
    table = table.rename(columns={"params.testbed": "testbed", "params.method": "method"})
    table = table.assign(flagged=table["flags"] != "")
    table = table.sort_values(["testbed", "flagged", "pgr_mean"], ascending=[True, True, False])
    return table.drop(columns="flagged").reset_index(drop=True)[columns]


def format_leaderboard(table: pd.DataFrame) -> str:
    lines = [f"{'testbed':<12} {'method':<34} {'seeds':>5} {'PGR mean ± sd':>15} {'transfer':>8} "
             f"{'weak':>6} {'strong':>6}  flags (shown apart)"]
    for row in table.itertuples():
        lines.append(f"{row.testbed:<12} {row.method:<34} {row.seeds:>5} "
                     f"{row.pgr_mean:>7.2f} ± {row.pgr_sd:<5.2f} {row.transfer_acc:>8.3f} "
                     f"{row.weak_acc:>6.2f} {row.strong_acc:>6.2f}  {row.flags}")
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
