"""Store-backend benchmark: the forum and the scorer-plus-record path on PostgreSQL versus sqlite,
100 concurrent researchers, measured side by side in one run. Prints one JSON line (progress
goes to stderr).

    .venv/bin/python benchmarks/store_backends.py                          # 100 researchers
    .venv/bin/python benchmarks/store_backends.py --home /tmp/bench-home   # ... reusing the testbed
    .venv/bin/python benchmarks/store_backends.py --quick                  # 10 researchers (the test)

Both stores are real and local, with their durable defaults: sqlite files in WAL mode with a
30 s busy timeout (as `aar_ray.forum.Forum` opens them; MLflow's server opens its own), and a
PostgreSQL 15 server started for the run (`aar_ray.forum.postgres.LocalPostgres`, fsync on).
The set-up imports a small taxonomy testbed for the scorer into `--home` (a temporary one by
default: its sentence vectors and baselines take 30-90 s on 2 cores, once per home).

Researchers are threads spread over `--processes` worker processes (spawned once and reused for
every turn), as a campaign's researchers are separate Ray actor processes: each researcher has
its own `Forum` (its own connection pool) and `Tracker`; each process has one in-process
`Scorer`. All researchers start together (a barrier). The backends take turns in the order
sqlite, PostgreSQL, PostgreSQL, sqlite, so that load from other jobs on the machine falls on
both alike (`--quick`: one turn each).

1. Forum (closed loop, `--seconds` per backend, half per turn; only steps finished inside the
   window count): each step is a researcher's forum workload after an experiment:
   `record_result` (a new call key), `post` (a note about it), `leaderboard()` and
   `read_posts()`. Both stores are seeded with the same 200 results and 200 posts first.
2. Scorer + record (a burst: every researcher runs `--experiments` experiments per turn, all at
   once; the turn lasts until the last is recorded): what `run_experiment` does for one seed —
   submit predictions to the `Scorer` (sealed labels, Ladder, audit log), write the MLflow record
   (`Tracker.log_experiment`: params, metrics, the predictions parquet and the config) through a
   real `mlflow server --serve-artifacts` (one on sqlite, one on PostgreSQL, same `--workers`,
   each worker's connection pool allowed `--mlflow-pool` connections), then
   `Forum.record_result` on the same backend. The first record of each process and server is
   made before the clock starts. Tracker's HTTP timeout is raised from 10 s to 300 s, so that
   a record queued behind 99 others waits instead of falling back to the spool.

Reported per backend: operations (experiments) per second, p50/p99 latency of each operation
and of a whole step, errors, and how the MLflow records ended (complete, partly refused by the
server, spooled, unwritten); ratios PostgreSQL / sqlite. Checked (`all_checks_pass`): one forum
row per `record_result` and no call key twice, one forum row and one MLflow run (or a record
still in a spool) per experiment, no exceptions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_plane import TESTBED, import_small_testbed  # noqa: E402  (the same small testbed)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORUM_OPS = ("record_result", "post", "leaderboard", "read_forum")
RECORD_STAGES = ("scorer", "mlflow_record", "forum_record")


# --------------------------------------------------------------------------- figures

T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"store_backends [{time.perf_counter() - T0:6.1f} s]: {message}", file=sys.stderr)


def percentiles(values) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p99": None}
    arr = np.asarray(values) * 1000
    return {"n": len(arr), "p50": round(float(np.percentile(arr, 50)), 2),
            "p99": round(float(np.percentile(arr, 99)), 2)}


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


# --------------------------------------------------------------------------- set-up

def scorer_config(baseline_seeds: int):
    from aar_ray.scoring import ScorerConfig

    return ScorerConfig(queries_per_analyst=10 ** 7, baseline_seeds=baseline_seeds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(backend_uri: str, artifacts: Path, workers: int, log: Path, pool: int) -> tuple[subprocess.Popen, str]:
    """`mlflow server` as clusters/start_mlflow.sh starts it, its store's connection pool sized
    for `pool` requests at once per worker (MLflow's default, 5 + 10 overflow, times a burst
    of 100 records out after 30 s: "QueuePool limit ... reached")."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5",
           "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(max(10, pool - 5))}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", backend_uri, "--serve-artifacts",
                             "--artifacts-destination", str(artifacts), "--workers", str(workers)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, uri: str, log: Path, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy in {timeout} s: {log.read_text()[-2000:]}")


def stop_servers(procs: list[subprocess.Popen], grace: float = 3.0) -> None:
    """Each server and its workers (their own process group): SIGTERM, then SIGKILL after `grace`."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------- worker processes

_barrier = None
_scorer = None


def _init_worker(barrier) -> None:
    global _barrier
    _barrier = barrier
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.dup2(2, 1)  # MLflow prints a line per run: keep stdout for the one JSON line
    # 100 records at once queue for longer than Tracker's 10 s fail-over to its spool: wait
    # instead, so that the burst measures the server's capacity rather than the spool's
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "300"


def _preload(_) -> float:
    """Import what the researchers use, in every worker process (one task each: the barrier
    holds each process until all have one), while the driver sets up."""
    start = time.perf_counter()
    import aar_ray.forum  # noqa: F401
    import aar_ray.scoring  # noqa: F401
    import aar_ray.tracking  # noqa: F401
    _barrier.wait(timeout=600)
    return time.perf_counter() - start


_warmed: set = set()


def _warm_record(task: dict) -> None:
    """One untimed record per process and server, to an experiment of its own: the first
    record of a process imports the artifact and parquet code, and the server's first request
    of its own."""
    import pandas as pd

    from aar_ray.tracking import Tracker

    if task["mlflow_uri"] in _warmed:
        return
    tracker = Tracker(task["mlflow_uri"], "warm-up", spool_dir=Path(task["spool"]) / f"warm-{os.getpid()}")
    tracker.log_experiment("warm-up", {"x": 1}, {"pgr": 0.0}, {"aar_key": f"warm-{os.getpid()}"},
                           predictions=pd.DataFrame({"id": task["ids"], "p": task["teacher"]}), config={"x": 1})
    _warmed.add(task["mlflow_uri"])


def _warm_scorer(home: str, baseline_seeds: int, ids: list) -> float:
    """The process's Scorer, built once (baselines come from the sealed store, the splits and
    shortcut answers are read on the first submission)."""
    global _scorer
    start = time.perf_counter()
    if _scorer is None:
        from aar_ray.scoring import Scorer

        _scorer = Scorer(home, scorer_config(baseline_seeds))
        _scorer.submit(f"warm-{os.getpid()}", TESTBED, ids, np.full(len(ids), 0.5), analyst=f"warm-{os.getpid()}")
    return time.perf_counter() - start


def _phase(task: dict) -> dict:
    """One worker process's share of a turn: `threads` researchers, started together with the
    other processes' (barrier). Forum: each loops for `seconds`, and only steps finished inside
    that window count. Scorer + record: each runs `experiments` experiments, all of which count,
    and the turn lasts until the last one is recorded (`makespan`)."""
    from aar_ray.forum import Forum

    threads, kind = task["threads"], task["kind"]
    lat = {op: [] for op in (*FORUM_OPS, *RECORD_STAGES, "step")}
    errors: list[str] = []
    counts = {"steps": 0, "all_steps": 0, "spooled": 0, "unwritten": 0, "result_ids": [], "last_done": 0.0}
    lock = threading.Lock()
    ready, go = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    start_box: dict = {}

    def forum_step(forum, name, key, step, rng) -> tuple[dict, int]:
        a = time.perf_counter()
        result_id = forum.record_result(name, TESTBED, f"idea-{step % 7}", key, [1], float(rng.random()), 0.8,
                                        [f"run-{key}"])
        b = time.perf_counter()
        forum.post(name, f"step {step}: idea-{step % 7}", "what I tried and what it scored " * 8,
                   run_ids=[f"run-{key}"])
        c = time.perf_counter()
        forum.leaderboard(testbed=TESTBED)
        d = time.perf_counter()
        forum.read_posts(limit=20)
        e = time.perf_counter()
        return dict(zip(FORUM_OPS, (b - a, c - b, d - c, e - d))), result_id

    def record_step(forum, tracker, name, key, step, rng) -> tuple[dict, int, bool]:
        import pandas as pd

        ids = task["ids"]
        probs = np.clip(task["teacher"] + rng.normal(0, 0.2, len(ids)), 0, 1)
        a = time.perf_counter()
        score = _scorer.submit(name, TESTBED, ids, probs, key=key, analyst=task["campaign"])
        b = time.perf_counter()
        params = {"testbed": TESTBED, "method": f"idea-{step % 7}", "seed": 1, "researcher": name}
        run_id = tracker.log_experiment(f"{name}-{step}", params,
                                        {"pgr": score["pgr"], "transfer_acc": score["transfer_acc"]},
                                        {"aar_key": key, "aar_kind": "experiment"},
                                        predictions=pd.DataFrame({"id": ids, "p": probs}), config=params)
        c = time.perf_counter()
        result_id = forum.record_result(name, TESTBED, f"idea-{step % 7}", key, [1], score["pgr"],
                                        score["transfer_acc"], [run_id])
        d = time.perf_counter()
        return dict(zip(RECORD_STAGES, (b - a, c - b, d - c))), result_id, run_id.startswith("pending:")

    def researcher(index: int) -> None:
        name = f"{task['run']}-{task['tag']}-p{task['proc']}-r{index}"
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        tracker = None
        try:
            forum = Forum(task["forum_url"], task["campaign"])
            forum.leaderboard(limit=1)  # a pooled connection, opened before the clock starts
            if kind == "record":
                from aar_ray.tracking import Tracker
                tracker = Tracker(task["mlflow_uri"], task["experiment"], spool_dir=Path(task["spool"]) / name)
        except Exception:  # noqa: BLE001
            errors.append(traceback.format_exc(limit=3))
            ready.wait()
            go.wait()
            return
        ready.wait()
        go.wait()
        end = start_box["at"] + task["seconds"] if kind == "forum" else float("inf")
        step, spooled, last_done = 0, 0, 0.0
        local = {op: [] for op in lat}
        local_ids = []
        while (time.perf_counter() < end) if kind == "forum" else (step < task["experiments"]):
            key = f"{name}/{step}"
            t0 = time.perf_counter()
            try:
                if kind == "forum":
                    timed, result_id = forum_step(forum, name, key, step, rng)
                else:
                    timed, result_id, was_spooled = record_step(forum, tracker, name, key, step, rng)
                    spooled += was_spooled
            except Exception:  # noqa: BLE001 - counted and reported, the researcher goes on
                errors.append(traceback.format_exc(limit=3))
                step += 1
                time.sleep(0.05)
                continue
            done = time.perf_counter()
            local_ids.append(result_id)
            step += 1
            last_done = done
            if done <= end:  # forum figures count the steps finished inside the window only
                for op, dt in (*timed.items(), ("step", done - t0)):
                    local[op].append(dt)
        unwritten = 0
        if tracker is not None:  # a last try at records the server refused during the burst
            tracker.flush_spool()
            unwritten = len(list(tracker.spool.glob("*.json")))
        forum.close()
        with lock:
            for op, values in local.items():
                lat[op].extend(values)
            counts["steps"] += len(local["step"])
            counts["all_steps"] += step
            counts["spooled"] += spooled
            counts["unwritten"] += unwritten
            counts["result_ids"].extend(local_ids)
            counts["last_done"] = max(counts["last_done"], last_done)

    if kind == "record":
        _warm_scorer(task["home"], task["baseline_seeds"], task["ids"])
        _warm_record(task)
    workers = [threading.Thread(target=researcher, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    ready.wait()  # every researcher of this process has its connections (and imports)
    _barrier.wait(timeout=600)  # ... and so has every other process's
    start_box["at"] = time.perf_counter()
    go.wait()
    for w in workers:
        w.join()
    makespan = max(0.0, counts.pop("last_done") - start_box["at"])
    return {"lat": lat, "errors": errors, "makespan": makespan, **counts}


# --------------------------------------------------------------------------- phases

def run_phase(pool, processes: int, researchers: int, kind: str, common: dict, tag: str,
              seconds: float = 0.0, experiments: int = 0) -> dict:
    per = [researchers // processes + (1 if i < researchers % processes else 0) for i in range(processes)]
    tasks = [{**common, "threads": n, "seconds": seconds, "experiments": experiments, "kind": kind, "proc": i,
              "tag": tag} for i, n in enumerate(per)]
    start = time.perf_counter()
    parts = pool.map(_phase, tasks, chunksize=1)
    wall = time.perf_counter() - start
    merged = {"lat": {}, "errors": [], "steps": 0, "all_steps": 0, "spooled": 0, "unwritten": 0, "result_ids": []}
    for part in parts:
        for op, values in part["lat"].items():
            merged["lat"].setdefault(op, []).extend(values)
        for key in ("errors", "result_ids"):
            merged[key] += part[key]
        for key in ("steps", "all_steps", "spooled", "unwritten"):
            merged[key] += part[key]
    # the window: the forum's fixed seconds; a burst of experiments lasts until the last is recorded
    merged["seconds"] = seconds if kind == "forum" else max(part["makespan"] for part in parts)
    merged["wall"] = round(wall, 1)
    progress(f"{tag}: {merged['steps']} steps in {merged['seconds']:.1f} s (wall {wall:.1f} s), "
             f"{len(merged['errors'])} errors")
    return merged


def summarise(rounds: list[dict], ops: tuple) -> dict:
    seconds = sum(r["seconds"] for r in rounds)
    lat = {op: [v for r in rounds for v in r["lat"].get(op, [])] for op in (*ops, "step")}
    steps = sum(r["steps"] for r in rounds)
    out = {"steps": steps, "seconds": round(seconds, 1), "steps_per_s": round(steps / seconds, 2) if seconds else None,
           "ops_per_s": round(sum(len(lat[op]) for op in ops) / seconds, 1) if seconds else None,
           "latency_ms": {op: percentiles(lat[op]) for op in (*ops, "step")},
           "errors": sum(len(r["errors"]) for r in rounds)}
    if out["errors"]:
        out["first_error"] = next(r["errors"][0] for r in rounds if r["errors"])[-600:]
    return out


def ratios(pg: dict, lite: dict, ops: tuple, rate: str) -> dict:
    """PostgreSQL over sqlite: the throughput (`rate`), and each latency's p50 and p99."""
    out = {rate: ratio(pg[rate], lite[rate])}
    for op in (*ops, "step"):
        for p in ("p50", "p99"):
            out[f"{op}_{p}"] = ratio(pg["latency_ms"][op][p], lite["latency_ms"][op][p])
    return out


def count_rows(url: str, campaign: str) -> tuple[int, int]:
    from sqlalchemy import func, select

    from aar_ray.forum import Forum, results

    forum = Forum(url, campaign)
    with forum.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(results).where(results.c.campaign == campaign)).scalar()
        keys = conn.execute(select(func.count(results.c.call_key.distinct()))
                            .where(results.c.campaign == campaign)).scalar()
    forum.close()
    return rows, keys


SEEDED = 200  # results (and posts) in each forum before the clock starts


def seed_forum(url: str, campaign: str) -> None:
    from aar_ray.forum import Forum

    forum = Forum(url, campaign)
    rng = np.random.default_rng(0)
    for i in range(SEEDED):
        forum.record_result(f"seed-{i % 10}", TESTBED, f"idea-{i % 13}", f"{campaign}/seed/{i}", [1, 2],
                            float(rng.random()), 0.8, [f"run-{i}"])
        forum.post(f"seed-{i % 10}", f"note {i}", "an earlier finding " * 10)
    forum.close()


# --------------------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--researchers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured seconds of the forum workload per backend (split over two turns)")
    parser.add_argument("--experiments", type=int, default=1,
                        help="experiments each researcher runs per turn of the scorer + record workload")
    parser.add_argument("--processes", type=int, default=2, help="worker processes the researchers are spread over")
    parser.add_argument("--mlflow-workers", type=int, default=2, help="--workers of each mlflow server")
    parser.add_argument("--mlflow-pool", type=int, default=100,
                        help="database connections each MLflow server worker may open (MLflow's default: 15)")
    parser.add_argument("--baseline-seeds", type=int, default=1, help="the scorer's baseline seeds (set-up only)")
    parser.add_argument("--home", help="an aar home to import the small testbed into (default: temporary)")
    parser.add_argument("--quick", action="store_true",
                        help="10 researchers, 2 processes, 3 s per backend and phase, one turn each")
    args = parser.parse_args(argv)
    if args.quick:
        args.researchers, args.seconds, args.processes = 10, 3.0, 2
        args.mlflow_workers, args.baseline_seeds = 1, 1
    return args


def main(argv=None) -> dict:
    global T0
    T0 = time.perf_counter()
    args = parse_args(argv)
    from aar_ray.forum.postgres import LocalPostgres

    t_start = time.perf_counter()
    turns = ["sqlite", "postgresql"] if args.quick else ["sqlite", "postgresql", "postgresql", "sqlite"]
    backends = ("sqlite", "postgresql")
    with tempfile.TemporaryDirectory(prefix="aar-stores-") as tmp, LocalPostgres(durable=True) as pg:
        tmp = Path(tmp)
        home = Path(args.home) if args.home else tmp / "home"
        forum_urls = {"sqlite": f"sqlite:///{tmp / 'forum.db'}", "postgresql": pg.create_database("forum")}
        mlflow_backends = {"sqlite": f"sqlite:///{tmp / 'mlflow.db'}",
                           "postgresql": pg.create_database("mlflow").replace("+psycopg", "")}
        servers = {}
        pool = None
        try:
            for b, uri in mlflow_backends.items():
                servers[b] = start_mlflow(uri, tmp / f"artifacts-{b}", args.mlflow_workers, tmp / f"mlflow-{b}.log",
                                          pool=args.mlflow_pool)
            ctx = mp.get_context("spawn")
            pool = ctx.Pool(args.processes, initializer=_init_worker, initargs=(ctx.Barrier(args.processes),))
            progress("PostgreSQL up, MLflow servers and worker processes starting")
            preload = pool.map_async(_preload, range(args.processes), chunksize=1)
            with contextlib.redirect_stdout(sys.stderr):
                report = measure(args, home, tmp, forum_urls, servers, pool, turns, backends, preload)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
                progress("worker processes stopped")
            t_stop = time.perf_counter()
            stop_servers([proc for proc, _ in servers.values()])
            progress(f"servers stopped in {time.perf_counter() - t_stop:.1f} s")
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report))
    return report


def measure(args, home: Path, tmp: Path, forum_urls: dict, servers: dict, pool, turns: list, backends: tuple,
            preload) -> dict:
    from aar_ray.models import TeacherConfig
    from aar_ray.models.artifacts import weak_labels
    from aar_ray.scoring import Scorer
    from aar_ray.testbeds import eval_ids, eval_rows, load_public
    from aar_ray.tracking import Tracker

    progress("driver imports done")
    t_start = time.perf_counter()
    # set-up, while the MLflow servers start: testbed, baselines, seeded forums
    home.mkdir(parents=True, exist_ok=True)
    import_small_testbed(home)
    Scorer(home, scorer_config(args.baseline_seeds)).baselines(TESTBED)
    ids = eval_ids(TESTBED, home, "validation")
    test_ids = load_public(TESTBED, home)["test"]["id"].tolist()
    teacher = weak_labels(TESTBED, home, TeacherConfig(), 1).probs["test"][eval_rows(test_ids, "validation")]
    testbed_seconds = time.perf_counter() - t_start
    for url in forum_urls.values():
        seed_forum(url, "bench-forum")
    seeded_seconds = time.perf_counter() - t_start
    for b, (proc, uri) in servers.items():
        wait_healthy(proc, uri, tmp / f"mlflow-{b}.log")
        for experiment in (f"bench-{b}", "warm-up"):  # made once, before the processes race to
            Tracker(uri, experiment, spool_dir=tmp / "spool-setup")
    preload.get(timeout=600)
    progress("worker processes ready")
    setup_seconds = time.perf_counter() - t_start
    progress(f"set-up {setup_seconds:.1f} s (testbed {testbed_seconds:.1f} s, forums seeded at "
             f"{seeded_seconds:.1f} s, MLflow servers up at {setup_seconds:.1f} s)")

    record_turns = turns
    run = uuid.uuid4().hex[:6]  # the scorer's audit log in a reused home must not replay old keys
    load_before = [round(x, 1) for x in os.getloadavg()]
    forum_runs = {b: [] for b in backends}
    record_runs = {b: [] for b in backends}
    for i, b in enumerate(turns):
        common = {"forum_url": forum_urls[b], "campaign": "bench-forum", "run": run}
        forum_runs[b].append(run_phase(pool, args.processes, args.researchers, "forum", common, f"forum-{b}-{i}",
                                       seconds=args.seconds / turns.count(b)))
    for i, b in enumerate(record_turns):
        common = {"forum_url": forum_urls[b], "campaign": "bench-record", "run": run, "mlflow_uri": servers[b][1],
                  "experiment": f"bench-{b}", "spool": str(tmp / f"spool-{b}"), "ids": ids,
                  "teacher": teacher, "home": str(home), "baseline_seeds": args.baseline_seeds}
        record_runs[b].append(run_phase(pool, args.processes, args.researchers, "record", common, f"record-{b}-{i}",
                                        experiments=args.experiments))

    forum = {b: summarise(forum_runs[b], FORUM_OPS) for b in backends}
    record = {}
    for b in backends:
        figures = summarise(record_runs[b], RECORD_STAGES)
        record[b] = {"experiments": figures["steps"], "seconds": figures["seconds"],
                     "experiments_per_s": figures["steps_per_s"],
                     "latency_ms": figures["latency_ms"], "errors": figures["errors"],
                     **({"first_error": figures["first_error"]} if "first_error" in figures else {})}
    # the books: one forum row per recorded result and no key twice; every experiment is an
    # MLflow run (complete, or FAILED with the part the server refused) or still in a spool
    checks = {}
    t_checks = time.perf_counter()
    for b, url in forum_urls.items():
        tracker = Tracker(servers[b][1], f"bench-{b}", spool_dir=tmp / "spool-setup")
        runs = tracker.client.search_runs([tracker.experiment_id], max_results=50000)
        record[b]["records"] = {
            "complete": sum(r.info.status == "FINISHED" for r in runs),
            "partly_refused": sum(r.info.status == "FAILED" for r in runs),  # Tracker's record_error tag
            "spooled_during_burst": sum(r["spooled"] for r in record_runs[b]),
            "unwritten_at_end": sum(r["unwritten"] for r in record_runs[b])}
        mlflow_runs = len(runs)
        rows, keys = count_rows(url, "bench-forum")
        recorded = sum(len(r["result_ids"]) for r in forum_runs[b])
        experiments = sum(r["all_steps"] for r in record_runs[b])
        rec_rows, rec_keys = count_rows(url, "bench-record")
        c = {"forum_new_rows": rows - SEEDED, "forum_record_results": recorded,
             "forum_duplicate_keys": rows - keys, "experiments": experiments,
             "experiment_rows": rec_rows, "mlflow_runs": mlflow_runs,
             "errors": forum[b]["errors"] + record[b]["errors"]}
        c["ok"] = (c["forum_new_rows"] == recorded and rows == keys and rec_rows == rec_keys == experiments
                   and mlflow_runs + record[b]["records"]["unwritten_at_end"] == experiments and c["errors"] == 0)
        checks[b] = c
    progress(f"checks {time.perf_counter() - t_checks:.1f} s")
    return {
        "benchmark": "store_backends", "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "researchers": args.researchers, "processes": args.processes,
        "forum_seconds_per_backend": args.seconds, "experiments_per_researcher_per_turn": args.experiments,
        "record_turns": record_turns,
        "load_average_1_5_15min": {"before": load_before, "after": [round(x, 1) for x in os.getloadavg()]},
        "forum_turns": turns, "mlflow_workers": args.mlflow_workers, "mlflow_pool_per_worker": args.mlflow_pool,
        "postgres": "15, local, fsync on",
        "forum": {**forum, "ratio_pg_over_sqlite": ratios(forum["postgresql"], forum["sqlite"], FORUM_OPS,
                                                          "ops_per_s")},
        "scorer_record": {**record, "ratio_pg_over_sqlite": ratios(record["postgresql"], record["sqlite"],
                                                                   RECORD_STAGES, "experiments_per_s")},
        "checks": checks, "all_checks_pass": all(c["ok"] for c in checks.values()),
        "setup_seconds": round(setup_seconds, 1),
        "phase_wall_seconds": {f"{kind}-{b}-{i}": runs[b][sum(t == b for t in order[:i])]["wall"]
                               for kind, runs, order in (("forum", forum_runs, turns),
                                                         ("record", record_runs, record_turns))
                               for i, b in enumerate(order)},
    }


if __name__ == "__main__":
    main()
