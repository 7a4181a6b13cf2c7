"""A throw-away PostgreSQL server on this machine: for tests, benchmarks and one-host trials.

    with LocalPostgres() as pg:
        url = pg.create_database("forum")   # postgresql+psycopg://aar@127.0.0.1:PORT/forum

It runs Debian's `postgresql` binaries (`initdb`, `pg_ctl`) on a fresh data folder in a
temporary directory, listening on a free loopback port (and a unix socket in that directory),
with trust authentication for the superuser `aar`; `stop()` shuts it down and deletes the folder.
PostgreSQL refuses to run as root: as root the server runs as the `postgres` user (created by the
Debian package), else `nobody`. A cluster uses a real database server instead (`forum_url`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from aar_ray import environment

PACKAGE_HINT = ("PostgreSQL server binaries not found: install Debian's `postgresql` package "
                "(`apt-get install postgresql`, which ./setup.sh does from .ci/apt-packages.txt), "
                "or set AAR_PG_BIN to the folder holding initdb and pg_ctl")


class PostgresUnavailable(RuntimeError):
    pass


def find_bin_dir() -> Path:
    """The folder with `initdb` and `pg_ctl`: $AAR_PG_BIN, else the newest
    /usr/lib/postgresql/<version>/bin, else the one on PATH."""
    candidates = [environment.pg_bin() or ""]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                         reverse=True)
    on_path = shutil.which("initdb")
    candidates += [str(Path(on_path).resolve().parent)] if on_path else []
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise PostgresUnavailable(PACKAGE_HINT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """One PostgreSQL server in a temporary folder. `durable=False` (tests) turns fsync off;
    benchmarks keep PostgreSQL's durable defaults."""

    def __init__(self, port: int | None = None, max_connections: int = 400, durable: bool = False,
                 user: str = "aar", parent: str | Path | None = None):
        self.bin = find_bin_dir()
        self.port = port or free_port()
        self.max_connections, self.durable, self.user = max_connections, durable, user
        self.parent = parent
        self.root: Path | None = None
        self.run_as = None  # the OS user the server runs as (root: postgres or nobody)
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self.run_as = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self.run_as is None:
                raise PostgresUnavailable("running as root and no `postgres` or `nobody` user to run PostgreSQL as")

    # --- process control ------------------------------------------------------------------
    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        result = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True,
                                timeout=timeout, cwd=self.root, **kwargs)
        if result.returncode != 0:
            log = self.root / "server.log" if self.root else None
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise PostgresUnavailable(f"{args[0]} failed ({result.returncode}): {result.stderr[-3000:]}\n{tail}")
        return result

    def start(self) -> "LocalPostgres":
        parent = self.parent
        if parent is None and self.run_as is not None and os.path.isdir("/tmp"):
            parent = "/tmp"  # not $TMPDIR: the server's user must be able to reach the folder
        self.root = Path(tempfile.mkdtemp(prefix="aar-pg-", dir=parent))
        if self.run_as is not None:
            os.chown(self.root, self.run_as.pw_uid, self.run_as.pw_gid)
        try:
            self._run("initdb", "-D", str(self.root / "data"), "-U", self.user, "-A", "trust",
                      "-E", "UTF8", "--locale=C", "--no-instructions", *([] if self.durable else ["--no-sync"]))
            options = [f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1",
                       f"-c max_connections={self.max_connections}"]
            if not self.durable:
                options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"),
                      "-w", "-t", "60", "-o", " ".join(options), "start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "-t", "30", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- databases ------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
