"""`aar`: the command line. Each subcommand is a few lines that call one part of the package."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from aar_ray import environment
from aar_ray.errors import UserError

log = logging.getLogger(__name__)

DESCRIPTION = """\
aar_ray runs weak-to-strong (W2S) experiments on a Ray cluster and scores them by PGR,
the share of the weak-to-strong gap a method recovers:
    PGR = (transfer_acc - weak_acc) / (strong_acc - weak_acc)

Typical session on one machine (local Ray; testbeds, sealed labels, checkpoints, reports and
MLflow in the aar home: --home, else $AAR_HOME, else ~/.aar, the same from every directory):
    aar campaign --config conf/campaign/laptop.yaml   # researchers in parallel, then a report
    aar campaign status --name laptop    # while it runs: each researcher's steps and spend, then totals
    aar testbed list                     # embedded CPU testbeds: sentiment, taxonomy, preference
    aar baseline --seeds 1-5             # every library method on every testbed, 5 seeds
    aar leaderboard                      # mean ± sd PGR per testbed and method
    aar score-holdout --testbed taxonomy --method vanilla_w2s   # operator: the held-out half
    aar ui                               # browse every run in the MLflow UI

On a Ray head started from the project's venv (README, "Using it"), submit from the checkout:
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env jobs/runtime_env.yaml -- python jobs/campaign.py --config conf/campaign/laptop.yaml
(jobs/baseline.py takes `aar baseline`'s options). In a job a relative --home is refused: its
working directory is Ray's temporary copy of the checkout (the default, ~/.aar, is absolute).
Labels of unlabelled, validation and holdout rows stay in <home>/sealed and are read only by
the scorer actor.
"""


def parse_seeds(text: str) -> list[int]:
    """`1-5` or `1,3,7` or `2`, or a mix (`1-3,7`): distinct seeds from 1, each range rising. Any
    other text is refused, never read as "no seeds" (which would run the config's default)."""
    usage = f"seeds {text!r}: use a range like 1-5, a list like 1,3,7, or both (1-3,7); seeds start at 1"
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise argparse.ArgumentTypeError(usage)
        first, last = int(lo), int(hi) if sep else int(lo)
        if first < 1:
            raise argparse.ArgumentTypeError(usage)
        if last < first:
            raise argparse.ArgumentTypeError(f"seeds {text!r}: the range {part} runs backwards; write {last}-{first}")
        seeds += range(first, last + 1)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"seeds {text!r}: seed {repeated[0]} is listed twice")
    return seeds


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None,
                        help="the storage root: testbeds, sealed labels, caches, campaigns, MLflow "
                             "(default: $AAR_HOME, else ~/.aar; absolute inside a Ray job)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<home>/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aar", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    testbed = sub.add_parser("testbed", help="import, list and inspect testbeds")
    tsub = testbed.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = tsub.add_parser("import", help="import a folder of train_label/train_unlabel/test .jsonl files")
    imp.add_argument("source", type=Path)
    imp.add_argument("--name", required=True, help="the name experiments will use")
    imp.add_argument("--overwrite", action="store_true", help="replace a testbed of the same name")
    imp.add_argument("--public-field", action="append", default=[], metavar="FIELD",
                     help="a row field researchers may see besides the format's own (repeatable, e.g. "
                     "consistency_id); every other field is sealed with the labels")
    _common(imp)
    _common(tsub.add_parser("list", help="imported testbeds and the embedded ones"))
    show = tsub.add_parser("show", help="format, sizes and a few public rows of a testbed")
    show.add_argument("name")
    _common(show)

    base = sub.add_parser("baseline", help="run library methods on testbeds over seeds, in parallel",
                          description="Run library methods as Ray tasks; every run lands in MLflow. "
                          "Methods are `name` or `name:key=value,...`, e.g. vanilla_w2s:loss=soft.")
    base.add_argument("--config", type=Path, default=None, help="a YAML file (see conf/baseline.yaml)")
    base.add_argument("--testbed", action="append", help="repeatable; default: all embedded testbeds")
    base.add_argument("--method", action="append", help="repeatable; default: every library method")
    base.add_argument("--seeds", type=parse_seeds, default=None, help="e.g. 1-5 (default) or 1,3")
    base.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. student.epochs=10")
    _common(base)

    board = sub.add_parser("leaderboard", help="mean ± sd validation PGR per testbed and method")
    board.add_argument("--experiment", default="aar-baselines")
    _common(board)

    hold = sub.add_parser("score-holdout", help="operator: re-run a method on the holdout split and score it")
    hold.add_argument("--testbed", required=True)
    hold.add_argument("--method", required=True)
    hold.add_argument("--seeds", type=parse_seeds, default=parse_seeds("1-5"))
    hold.add_argument("--experiment", default="aar-holdout")
    hold.add_argument("--shuffle-teacher", action="store_true",
                      help="the teacher-ablation control: the same runs with the teacher's labels shuffled "
                           "across rows; a method whose PGR does not move is not using the teacher")
    _common(hold)

    ui = sub.add_parser("ui", help="open the MLflow UI on the tracking store")
    ui.add_argument("--port", type=int, default=5000)
    _common(ui)

    sub.add_parser("methods", help="the method library: names, parameters and defaults")

    _add_campaign_parsers(sub)

    dq = sub.add_parser("disqualify", help="remove a result from a campaign's leaderboard, with the reason")
    dq.add_argument("result_id", type=int, help="the id shown by `aar report` / the forum's results")
    dq.add_argument("--campaign", required=True)
    dq.add_argument("--reason", required=True)
    _common(dq)

    rep = sub.add_parser("report", help="print the report of a finished campaign")
    rep.add_argument("campaign")
    _common(rep)
    return parser


CAMPAIGN_CONTROLS = {"pause": "pause", "stop": "stop", "continue": "run"}  # action -> control file value
CAMPAIGN_ACTIONS = ("run", "status", *CAMPAIGN_CONTROLS)


def _add_campaign_parsers(sub) -> None:
    camp = sub.add_parser("campaign", help="researchers in parallel until a budget is spent, then "
                          "the generalisation check and a report",
                          description="Run a campaign from a preset in conf/campaign/ (laptop: three "
                          "offline search researchers on the CPU testbeds): `aar campaign [run] --config "
                          "FILE [key=value ...]`. For a running campaign: `aar campaign "
                          "status|pause|stop|continue --name N [--researcher R]`.")
    actions = camp.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run a campaign (the default when no action is given)")
    run.add_argument("--config", type=Path, default=None, help="e.g. conf/campaign/laptop.yaml")
    run.add_argument("--resume", action="store_true", help="continue the campaign of the same name")
    run.add_argument("overrides", nargs="*", help="config overrides such as researchers=5 "
                     "researcher_limits.max_experiments=10")
    _common(run)
    status = actions.add_parser("status", help="each researcher: steps, spend, why it stopped; "
                                "then the campaign's totals against its caps")
    status.add_argument("--name", required=True, help="the campaign")
    _common(status)
    for action, what in (("pause", "pause"), ("stop", "stop"), ("continue", "let run again")):
        control = actions.add_parser(action, help=f"{what} a running campaign, or one researcher of it")
        control.add_argument("--name", required=True, help="the campaign")
        control.add_argument("--researcher", default=None, help=f"{what} only this researcher")
        _common(control)


def with_default_campaign_action(argv: list[str]) -> list[str]:
    """`aar campaign --config F ...` means `aar campaign run --config F ...`."""
    if argv[:1] == ["campaign"] and (len(argv) == 1 or argv[1] not in (*CAMPAIGN_ACTIONS, "-h", "--help")):
        return ["campaign", "run", *argv[1:]]
    return argv


def _location_overrides(args) -> list[str]:
    """--home and --tracking-uri as config overrides, so flags and YAML keys meet in one place."""
    return ([f"home={args.home}"] if args.home else []) + \
        ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])


def _home(args) -> str:
    """The home as an absolute path, fixed here once for every command."""
    from aar_ray.home import resolve_home

    return resolve_home(args.home)


def _tracking_uri(args) -> str:
    from aar_ray.config import resolve_store_url
    from aar_ray.tracking import resolve_tracking_uri

    uri = resolve_store_url(args.tracking_uri, "--tracking-uri") if args.tracking_uri else None
    return resolve_tracking_uri(uri, _home(args))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (`ray job stop`, kill) ends a run like Ctrl-C does


def _stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)


def cmd_testbed(args) -> int:
    from aar_ray import testbeds

    home = _home(args)
    if args.action == "import":
        path = testbeds.import_testbed(args.source, args.name, home, overwrite=args.overwrite,
                                       public_extra=tuple(args.public_field))
        meta = testbeds.testbed_meta(args.name, home)
        print(f"imported {args.name!r} ({meta['format']}, rows {meta['rows']}) into {path}")
        print(_field_summary(meta))
    elif args.action == "list":
        imported = testbeds.list_testbeds(home)
        for name in sorted(set(imported) | set(testbeds.EMBEDDED_TESTBEDS)):
            where = "stored" if name in imported else "embedded, generated on first use"
            print(f"{name:<16} {where}")
    else:
        meta = testbeds.ensure_testbed(args.name, home)
        print("\n".join(f"{k}: {v}" for k, v in meta.items() if not k.endswith("_fields")))
        print(_field_summary(meta))
        print(testbeds.load_public(args.name, home)["train_unlabel"].head(3).to_string())
    return 0


def _field_summary(meta: dict) -> str:
    return (f"public fields (researchers see them): {', '.join(meta['public_fields'])}\n"
            f"sealed fields (the scorer's alone): {', '.join(meta['sealed_fields'])}\n"
            "train_label: the teacher's training data, kept from researchers")


def cmd_baseline(args) -> int:
    from aar_ray.config import BaselineConfig, load_config
    from aar_ray.experiments.sweep import run_sweep
    from aar_ray.tracking import Tracker, format_leaderboard

    overrides = list(args.overrides)
    if args.testbed:
        overrides.append(f"testbeds=[{','.join(args.testbed)}]")
    if args.method:
        overrides.append(f"methods=[{','.join(args.method)}]")
    if args.seeds is not None:
        overrides.append(f"seeds=[{','.join(map(str, args.seeds))}]")
    overrides += _location_overrides(args)
    config = load_config(BaselineConfig, args.config, overrides)
    _stop_on_sigterm()
    started = time.time()
    try:
        table = run_sweep(config)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        try:
            killed = Tracker(config.tracking.uri, config.tracking.experiment).mark_killed(started)
        except Exception as err:  # the store is away: say so, still in one line
            log.debug("marking the interrupted runs KILLED failed", exc_info=True)
            killed = f"no (the MLflow store did not answer: {type(err).__name__})"
        print(f"aar baseline: interrupted; {killed} MLflow run(s) left running marked KILLED; "
              "finished seeds are recorded", file=sys.stderr)
        return 130
    print(format_leaderboard(table))
    return 0


def cmd_leaderboard(args) -> int:
    from aar_ray.tracking import Tracker, format_leaderboard, leaderboard

    print(format_leaderboard(leaderboard(Tracker(_tracking_uri(args), args.experiment).runs())))
    return 0


def cmd_score_holdout(args) -> int:
    from aar_ray.experiments.holdout import score_holdout

    for row in score_holdout(args.testbed, args.method, args.seeds, _home(args),
                             _tracking_uri(args), args.experiment, shuffle_teacher=args.shuffle_teacher):
        print(f"seed {row['seed']}: holdout PGR {row['pgr']:.2f} (transfer {row['transfer_acc']:.2f})")
    return 0


def cmd_ui(args) -> int:
    uri = _tracking_uri(args)
    # Artifacts of new experiments go beside a sqlite store (<home>/mlartifacts), not into the
    # directory `aar ui` happens to be started from.
    beside = ["--artifacts-destination", str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")] \
        if uri.startswith("sqlite:///") else []
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port}")
    from aar_ray.tracking import results_links

    for name, link in results_links(uri, f"http://127.0.0.1:{args.port}").items():
        print(f"  {name}: {link}")  # opens the runs table with PGR, not the UI's GenAI overview
    # One server worker: a UI for one person. MLflow's 4 each import the whole server; with its job
    # runner (off: environment.PROCESS_DEFAULTS) the first answer took 2.2x as long on 2 cores.
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, *beside,
                               "--port", str(args.port), "--workers", "1"])


def cmd_methods(args) -> int:
    from aar_ray.methods import METHODS

    for m in METHODS.values():
        params = ", ".join(f"{k}={v!r}" for k, v in m.defaults.items())
        print(f"{m.name:<18} {m.summary}\n{'':<18} parameters: {params or 'none'}")
    return 0


def cmd_campaign(args) -> int:
    from aar_ray.campaign import campaign_status, campaign_totals, set_control

    try:
        if args.action == "run":
            return run_campaign_command(args)
        if args.action == "status":
            for row in campaign_status(_home(args), args.name):
                print(json.dumps(row))
            print(json.dumps(campaign_totals(_home(args), args.name)))  # last: the campaign against its caps
        else:
            print(json.dumps(set_control(_home(args), args.name, CAMPAIGN_CONTROLS[args.action], args.researcher)))
        return 0
    except FileNotFoundError as missing:  # no campaign of that name
        raise UserError(str(missing)) from None
    except FileExistsError as exists:  # a new campaign under a used name: it says to pass --resume
        raise UserError(str(exists)) from None


def run_campaign_command(args) -> int:
    from aar_ray.campaign import CampaignConfig, CampaignInterrupted, CampaignRunning, run_campaign
    from aar_ray.config import load_config

    overrides = list(args.overrides)
    overrides += _location_overrides(args)
    config = load_config(CampaignConfig, args.config, overrides)
    _stop_on_sigterm()
    try:
        outcome = run_campaign(config, resume=args.resume)
    except CampaignRunning as running:
        print(f"aar campaign: error: {running}", file=sys.stderr)
        return 2
    except CampaignInterrupted as stopped:
        print(f"aar campaign: {stopped}", file=sys.stderr)
        return 130
    print(Path(outcome["report"]).read_text())
    print(f"report: {outcome['report']}")
    return 0


def cmd_report(args) -> int:
    from aar_ray.campaign.paths import CampaignPaths

    report = CampaignPaths(_home(args), args.campaign).report
    if not report.exists():
        print(f"aar report: no report for campaign {args.campaign!r} at {report}", file=sys.stderr)
        return 2
    print(report.read_text())
    return 0


def cmd_disqualify(args) -> int:
    from aar_ray.forum import Forum, default_url
    from mlflow import MlflowClient

    forum = Forum(default_url(_home(args)), args.campaign)
    row = next((r for r in forum.results() if r.id == args.result_id), None)
    if row is None:
        raise UserError(f"no result {args.result_id} in campaign {args.campaign!r}")
    forum.disqualify(args.result_id, args.reason)
    client = MlflowClient(_tracking_uri(args))
    for run_id in row.run_ids:
        client.set_tag(run_id, "disqualified", args.reason)
    print(f"disqualified result {args.result_id} ({row.label} by {row.researcher}): {args.reason}")
    return 0


COMMANDS = {"campaign": cmd_campaign, "disqualify": cmd_disqualify, "report": cmd_report, "testbed": cmd_testbed, "baseline": cmd_baseline, "leaderboard": cmd_leaderboard,
            "score-holdout": cmd_score_holdout, "ui": cmd_ui, "methods": cmd_methods}


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes, as logging's last resort does."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def configure_logging(level: str | None = None) -> None:
    """Every module logs to `logging.getLogger(__name__)`, so all of them hang under `aar_ray`;
    the commands show that tree's warnings (or `$AAR_LOG_LEVEL`'s level) on stderr, one line each."""
    tree = logging.getLogger("aar_ray")
    asked = level or environment.log_level()
    if asked and asked.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise UserError(f"AAR_LOG_LEVEL={asked!r}; allowed: DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if asked:  # otherwise the tree keeps the root's level (WARNING unless an embedding program says)
        tree.setLevel(asked.upper())
    handler = next((h for h in tree.handlers if isinstance(h, _CurrentStderr)), None)
    if handler is None:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        tree.addHandler(handler)
    handler.setLevel((asked or "WARNING").upper())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(with_default_campaign_action(sys.argv[1:] if argv is None else argv))
    try:
        environment.prepare_process()
        configure_logging()
        return COMMANDS[args.command](args)
    except UserError as err:  # anything else is a bug: its traceback is shown
        print(f"aar {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aar {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
