"""Cluster-grade backends for real: the forum on a PostgreSQL server (and, side by side, on
sqlite, the one-machine default), MLflow's tracking server on PostgreSQL with proxied artifacts
started by clusters/start_mlflow.sh, and the store-backends benchmark in its quick mode.

The PostgreSQL server is Debian's `postgresql` (setup.sh installs it), started once for the
session in a temporary folder on a free loopback port (`aar_ray.forum.postgres.LocalPostgres`);
every test gets a fresh database on it.
"""

import contextlib
import io
import itertools
import json
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from aar_ray.forum import Forum, engine_url
from aar_ray.forum.postgres import LocalPostgres, PostgresUnavailable, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
_names = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    try:
        server = LocalPostgres().start()
    except PostgresUnavailable as err:
        pytest.fail(f"cannot start PostgreSQL for the tests: {err}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    return postgres.create_database(f"t{os.getpid()}_{next(_names)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'forum.db'}"
    return request.getfixturevalue("pg_url")


def test_forum_posts_code_results_leaderboard_and_flags(store_url):
    forum = Forum(store_url, "c1")
    other = Forum(store_url, "c2")  # another campaign in the same store sees none of it
    first = forum.post("r1", "Entropy reg helps", "soft labels + entropy: +0.1 PGR", run_ids=["a"], code_refs=[1])
    forum.post("r2", "t" * 2000, "100% of the _weird_ rows")  # no length limit on either store
    assert [p["id"] for p in forum.read_posts()][-1] == first  # newest first
    assert [p["author"] for p in forum.read_posts(query="ENTROPY")] == ["r1"]
    assert [p["author"] for p in forum.read_posts(query="100%")] == ["r2"]
    assert forum.read_posts(query="%") == forum.read_posts(query="100%")  # % and _ are literal
    assert json.loads(forum.read_posts(limit=1, query="entropy")[0]["run_ids"]) == ["a"]
    assert len(forum.read_posts(limit=1)) == 1 and other.read_posts() == []

    code_id = forum.share_code("r1", "entropy_reg", "def run(ctx):\n    return None\n")
    assert forum.read_code(code_id)["name"] == "entropy_reg" and forum.read_code(10 ** 6) is None

    ids = {}
    for idea, testbed, pgr in [("a", "tax", 0.4), ("b", "tax", 0.9), ("c", "pref", 0.7), ("nan", "tax", float("nan")),
                               ("d", "tax", 0.6)]:
        ids[idea] = forum.record_result("r1", testbed, idea, f"c1/r1/{idea}", [1, 2], pgr, 0.8, ["run"],
                                        code_ref=code_id, flags="", gpu_seconds=1.5)
    assert forum.result_for("c1/r1/b").pgr == 0.9 and forum.result_for("nope") is None
    assert [r.name for r in forum.results()] == ["a", "b", "c", "nan", "d"] and other.results() == []
    # best first, a result without a PGR last (NaN is stored as NULL on both stores)
    assert [r.name for r in forum.leaderboard()] == ["b", "c", "d", "a", "nan"]
    assert [r.name for r in forum.leaderboard(testbed="tax", limit=2)] == ["b", "d"]
    forum.disqualify(ids["b"], "reads the test split")
    assert [r.name for r in forum.leaderboard(testbed="tax")] == ["d", "a", "nan"]
    assert forum.result_for("c1/r1/b").disqualified == "reads the test split"
    for flag in ("ignores_teacher", "ignores_teacher", "ignores-teacher", "x"):
        forum.add_flag(ids["d"], flag)
    assert forum.result_for("c1/r1/d").flags == ("ignores_teacher", "ignores-teacher", "x")
    forum.close()


def test_record_result_is_idempotent_per_call_key(store_url):
    forum = Forum(store_url, "c1")
    first = forum.record_result("r1", "tax", "idea", "c1/r1/call-7", [1], 0.3, 0.8, ["run-1"])
    again = forum.record_result("r1", "tax", "idea-retried", "c1/r1/call-7", [1, 2], 0.9, 0.9, ["run-2"])
    assert again == first
    [row] = forum.results()
    assert (row.name, row.pgr, row.run_ids) == ("idea", 0.3, ("run-1",))  # the first record
    # a second Forum (another process's) gets the same answer, without an error
    assert Forum(store_url, "c1").record_result("r2", "tax", "x", "c1/r1/call-7", [1], 0.1, 0.1, []) == first
    # results without a call key are not deduplicated
    assert forum.record_result("r1", "tax", "k0", None, [1], 0.1, 0.8, []) != \
        forum.record_result("r1", "tax", "k1", None, [1], 0.1, 0.8, [])
    assert len(forum.results()) == 3


def test_concurrent_writers_from_many_processes(store_url):
    """Six researcher processes create the schema at once, then record the same call keys at
    once: one row per key, every process told the same id, no flag lost, no error."""
    from pg import racing_writer, set_barrier

    shared = [f"c1/shared/{i}" for i in range(20)]
    writers = 6
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(writers, mp_context=ctx, initializer=set_barrier,
                             initargs=(ctx.Barrier(writers),)) as pool:
        outs = list(pool.map(racing_writer, [store_url] * writers, ["c1"] * writers, range(writers),
                             [shared] * writers))
    forum = Forum(store_url, "c1")
    rows = forum.results()
    assert len(rows) == len(shared) + writers * 5
    assert len({r.call_key for r in rows}) == len(rows)
    for key in shared:
        assert len({out["ids"][key] for out in outs}) == 1  # every process got the one row's id
        assert forum.result_for(key).id == outs[0]["ids"][key]
    assert sorted(forum.result_for(shared[0]).flags) == [f"flag{i}" for i in range(writers)]
    assert len(forum.read_posts(limit=100)) == writers


def test_pool_survives_dropped_connections_and_forum_pickles(pg_url, postgres):
    """A server restart or an idle timeout drops pooled connections: the next call reconnects
    (pool_pre_ping). A Forum sent to another process rebuilds its engine there."""
    import psycopg

    forum = Forum(pg_url.replace("postgresql+psycopg://", "postgresql://"), "c1")  # bare scheme: psycopg 3
    assert forum.engine.dialect.driver == "psycopg"
    forum.post("r1", "before", "x")
    with psycopg.connect(postgres.url().replace("+psycopg", ""), autocommit=True) as conn:
        dropped = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'aar-forum'").fetchone()[0]
    assert dropped >= 1
    forum.post("r1", "after", "x")
    copy = pickle.loads(pickle.dumps(forum))
    assert [p["title"] for p in copy.read_posts()] == ["after", "before"]
    assert engine_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"


def test_missing_postgres_fails_naming_the_package(monkeypatch):
    import aar_ray.forum.postgres as pgmod

    monkeypatch.setenv("AAR_PG_BIN", "/nonexistent")
    monkeypatch.setattr(pgmod.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pgmod.shutil, "which", lambda name: None)
    with pytest.raises(PostgresUnavailable, match="apt-get install postgresql"):
        LocalPostgres()


def test_mlflow_server_on_postgres_with_proxied_artifacts(postgres, tmp_path):
    """clusters/start_mlflow.sh (as the cluster head runs it) starts `mlflow server` on a
    PostgreSQL backend with proxied artifacts; a Tracker logs an experiment through it, and the
    run, its metrics and its artifacts are read back through the server and found in PostgreSQL
    and under the artifacts destination."""
    import psycopg
    from mlflow import MlflowClient

    from aar_ray.tracking import Tracker

    backend = postgres.create_database("mlflow_server").replace("postgresql+psycopg://", "postgresql://")
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path), "MLFLOW_BACKEND_STORE_URI": backend,
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"), "MLFLOW_PORT": str(port),
           "MLFLOW_WORKERS": "1", "AAR_MLFLOW_ENV_FILE": str(tmp_path / "absent.env"),
           "AAR_MLFLOW_START_TIMEOUT_S": "600",  # its start-up time depends on the machine's load
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    started = subprocess.run(["bash", str(ROOT / "clusters" / "start_mlflow.sh"), "--require-server-db"],
                             env=env, capture_output=True, text=True, timeout=900)
    pgid_file = tmp_path / "aar_mlflow" / "server.pgid"
    try:
        assert started.returncode == 0, started.stderr + (tmp_path / "aar_mlflow" / "server.log").read_text()[-3000:]
        args = subprocess.run(["ps", "-ww", "-o", "args=", "-g", pgid_file.read_text().strip()],
                              capture_output=True, text=True).stdout
        assert f"--backend-store-uri {backend}" in args and "--serve-artifacts" in args

        tracker = Tracker(f"http://127.0.0.1:{port}", "pg-campaign", spool_dir=tmp_path / "spool")
        predictions = pd.DataFrame({"id": [3, 1, 2], "p": [0.2, 0.9, 0.6]})
        run_id = tracker.log_experiment("vanilla-seed1", {"method": "vanilla_w2s", "seed": 1},
                                        {"pgr": 0.42, "transfer_acc": 0.81},
                                        {"aar_key": "k1", "aar_kind": "experiment"},
                                        predictions=predictions, code="def run(ctx):\n    pass\n")
        assert not run_id.startswith("pending:")

        client = MlflowClient(f"http://127.0.0.1:{port}")  # a fresh client: read back through the server
        run = client.get_run(run_id)
        assert run.data.metrics["pgr"] == 0.42 and run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, not a path on this machine
        local = client.download_artifacts(run_id, "predictions.parquet", str(tmp_path / "download"))
        pd.testing.assert_frame_equal(pd.read_parquet(local), predictions)
        assert sorted(a.path for a in client.list_artifacts(run_id)) == ["idea.py", "predictions.parquet"]
        assert list((tmp_path / "artifacts").rglob("predictions.parquet"))  # stored behind the server
        assert tracker.find_run("k1") == run_id

        with psycopg.connect(backend) as conn:  # the run is in PostgreSQL, not in a sqlite file
            assert conn.execute("SELECT name FROM runs WHERE run_uuid = %s", (run_id,)).fetchone() == ("vanilla-seed1",)
            assert conn.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'pgr'",
                                (run_id,)).fetchone() == (0.42,)
        assert not list(tmp_path.rglob("*.db"))
    finally:
        if pgid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pgid_file.read_text()), signal.SIGKILL)


def test_store_backends_benchmark_quick(small_home):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import store_backends

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        returned = store_backends.main(["--quick", "--home", str(small_home)])
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    report = json.loads(lines[0])
    assert report == json.loads(json.dumps(returned))
    assert report["researchers"] == 10
    assert report["forum_turns"] == report["record_turns"] == ["sqlite", "postgresql"]
    assert report["all_checks_pass"], report["checks"]
    for backend in ("sqlite", "postgresql"):
        forum = report["forum"][backend]
        assert forum["ops_per_s"] > 0 and forum["errors"] == 0
        for op in ("record_result", "post", "leaderboard", "read_forum", "step"):
            figures = forum["latency_ms"][op]
            assert figures["n"] > 0 and 0 < figures["p50"] <= figures["p99"]
        record = report["scorer_record"][backend]
        assert record["experiments"] > 0 and record["errors"] == 0
        for stage in ("scorer", "mlflow_record", "forum_record", "step"):
            assert record["latency_ms"][stage]["p50"] > 0
    assert report["forum"]["ratio_pg_over_sqlite"]["ops_per_s"] == pytest.approx(
        report["forum"]["postgresql"]["ops_per_s"] / report["forum"]["sqlite"]["ops_per_s"], abs=0.01)
    assert report["scorer_record"]["ratio_pg_over_sqlite"]["experiments_per_s"] > 0
