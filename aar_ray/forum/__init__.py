"""The shared store researchers meet in: forum posts, shared idea code, and scored results.

One SQL database for all actors — sqlite under the aar home by default (one machine), any
SQLAlchemy URL on a cluster, where it is PostgreSQL (`forum_url` in the campaign config, e.g.
`postgresql://aar:PASSWORD@db-host:5432/aar`; `postgresql://` and `postgres://` run on psycopg 3).
The leaderboard is a query over `results`, which only experiment code that has been through the
scorer writes; researchers read it, never write it.

Many processes use one store at once (every researcher is a Ray actor with its own `Forum`):
  - each `Forum` keeps a small connection pool (PostgreSQL: 1 connection kept, up to 4 more
    while several threads of one process write at once, checked before use and recycled every
    30 min), so a campaign holds about one connection per researcher: give the server a
    `max_connections` above the researchers plus the MLflow server's pool;
  - the schema is created by whichever process comes first (PostgreSQL: under an advisory
    lock; sqlite: retried if another process created it meanwhile);
  - a result is recorded once per `call_key`: recording the same call again (a retried or
    resumed experiment, two processes racing) returns the first record's id and writes nothing;
  - flags are appended in one UPDATE, so concurrent flaggers never lose one another's flag.
The SQL is portable: the same queries and results on sqlite and PostgreSQL (tests run both).

Results come back as typed records (`records.Result`), parsed from their row in one place. A
result's `kind` ("method": a library method spec; "idea": an idea file's code) is a column of its
own; a store made before that column existed gets it when first opened (see `_add_kind`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from sqlalchemy import (Column, Float, Integer, MetaData, Table, Text, case, create_engine, event,
                        func, insert, inspect, literal, select, text)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from aar_ray.forum.records import IDEA, KINDS, METHOD, Result

metadata = MetaData()

# Free text everywhere: PostgreSQL enforces VARCHAR lengths and sqlite does not, and a
# researcher's title or call id has no natural bound. (On sqlite TEXT and VARCHAR are the same.)
posts = Table(
    "posts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign", Text, index=True), Column("author", Text, index=True),
    Column("time", Float), Column("title", Text), Column("body", Text),
    Column("run_ids", Text),  # JSON list of MLflow run ids the post is about
    Column("code_refs", Text),  # JSON list of shared-code ids it builds on
)
shared_code = Table(
    "shared_code", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign", Text, index=True), Column("author", Text),
    Column("time", Float), Column("name", Text), Column("code", Text),
)
results = Table(
    "results", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign", Text, index=True), Column("researcher", Text, index=True),
    Column("time", Float), Column("testbed", Text),
    Column("idea", Text),  # the method's label, or the idea file's name (see `kind`)
    Column("kind", Text, nullable=False, server_default=METHOD),  # records.KINDS
    Column("code_ref", Integer, nullable=True), Column("call_key", Text, unique=True),
    Column("seeds", Text), Column("pgr", Float), Column("transfer_acc", Float),
    Column("run_ids", Text), Column("flags", Text, default=""),
    Column("disqualified", Text, nullable=True), Column("gpu_seconds", Float, default=0.0),
    # What researchers were shown: the scorer's Ladder value when this result raised the
    # campaign's best, else NULL. `pgr` is the record (operator side), never shown to them.
    Column("shown_pgr", Float, nullable=True),
)

SCHEMA_LOCK = 0x6161725F666F72  # pg_advisory_xact_lock key: "aar_for"
POOL = {"pool_size": 1, "max_overflow": 4, "pool_timeout": 30, "pool_recycle": 1800, "pool_pre_ping": True}


def default_url(home: str | Path) -> str:
    return f"sqlite:///{Path(home).resolve() / 'forum.db'}"


def engine_url(url: str) -> str:
    """`postgresql://` and `postgres://` on psycopg 3 (the driver this project installs),
    whatever SQLAlchemy's default driver is; any other URL unchanged."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def _number(value):
    """NaN as NULL: sqlite stores NaN as NULL while PostgreSQL sorts it above every number."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


class Forum:
    def __init__(self, url: str, campaign: str, pool: dict | None = None):
        self.url, self.campaign = url, campaign
        self._pool_options = pool
        driver_url = make_url(engine_url(url))
        self.dialect = driver_url.get_backend_name()
        if self.dialect == "postgresql":
            self.engine = create_engine(driver_url, **{**POOL, **(pool or {})},
                                        connect_args={"connect_timeout": 10, "application_name": "aar-forum"})
        else:
            self.engine = create_engine(driver_url, **(pool or {}))
        if self.dialect == "sqlite":
            # Many actors write at once: wait for the lock instead of failing, and let readers
            # run beside the writer.
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(conn, _):
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=30000")
        self._create_schema()

    def _create_schema(self) -> None:
        if self.dialect == "postgresql":
            # Two processes creating the tables at once would both find them missing; the
            # lock (released at commit) makes the second wait and then find them.
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
                metadata.create_all(conn)
                _add_kind(conn)
            return
        for attempt in range(10):
            try:
                metadata.create_all(self.engine)
                self._add_kind_sqlite()
                return
            except DBAPIError:  # "table ... already exists": another process won the race
                if attempt == 9:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _add_kind_sqlite(self) -> None:
        if "kind" in {c["name"] for c in inspect(self.engine).get_columns("results")}:
            return
        # pysqlite starts no transaction before DDL by itself: take the write lock explicitly,
        # so that no other process reads the new column before its values are derived.
        with self.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            _add_kind(conn)
            conn.commit()

    def close(self) -> None:
        """Close the pooled connections (a new call opens them again)."""
        self.engine.dispose()

    def __getstate__(self) -> dict:  # an engine does not travel between processes: rebuild it
        return {"url": self.url, "campaign": self.campaign, "pool": self._pool_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["campaign"], state.get("pool"))

    def _insert(self, table: Table, **values) -> int:
        with self.engine.begin() as conn:
            return conn.execute(insert(table).values(campaign=self.campaign, time=time.time(),
                                                     **values)).inserted_primary_key[0]

    def _rows(self, query) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def _results(self, query) -> list[Result]:
        return [Result.from_row(row) for row in self._rows(query)]

    # --- posts ------------------------------------------------------------------------------
    def post(self, author: str, title: str, body: str, run_ids: list[str] = (),
             code_refs: list[int] = ()) -> int:
        return self._insert(posts, author=author, title=title, body=body,
                            run_ids=json.dumps(list(run_ids)), code_refs=json.dumps(list(code_refs)))

    def read_posts(self, limit: int = 20, query: str | None = None) -> list[dict]:
        """Newest first; `query` matches title or body, case-insensitively (literally: % and _
        are plain characters)."""
        q = select(posts).where(posts.c.campaign == self.campaign)
        if query:
            needle = query.lower()
            q = q.where(func.lower(posts.c.title).contains(needle, autoescape=True)
                        | func.lower(posts.c.body).contains(needle, autoescape=True))
        return self._rows(q.order_by(posts.c.id.desc()).limit(limit))

    # --- shared code ------------------------------------------------------------------------
    def share_code(self, author: str, name: str, code: str) -> int:
        return self._insert(shared_code, author=author, name=name, code=code)

    def read_code(self, code_id: int) -> dict | None:
        rows = self._rows(select(shared_code).where(shared_code.c.id == int(code_id)))
        return rows[0] if rows else None

    # --- results and leaderboard ------------------------------------------------------------
    def record_result(self, researcher: str, testbed: str, idea: str, call_key: str, seeds: list[int],
                      pgr: float, transfer_acc: float, run_ids: list[str], code_ref: int | None = None,
                      flags: str = "", gpu_seconds: float = 0.0, shown_pgr: float | None = None,
                      kind: str = METHOD) -> int:
        """Record one experiment call's result; returns its id. `idea` is the method's label
        (kind "method") or the idea file's name (kind "idea"), without any prefix. Idempotent on
        `call_key`: when that call is already recorded (a retry, or another process first),
        nothing is written and the recorded result's id is returned."""
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}; allowed: {', '.join(KINDS)}")
        values = dict(campaign=self.campaign, time=time.time(), researcher=researcher, testbed=testbed,
                      idea=idea, kind=kind, call_key=call_key, seeds=",".join(map(str, seeds)), pgr=_number(pgr),
                      transfer_acc=_number(transfer_acc), run_ids=json.dumps(list(run_ids)),
                      code_ref=code_ref, flags=flags, gpu_seconds=gpu_seconds, shown_pgr=_number(shown_pgr))
        if call_key is None:
            return self._insert(results, **{k: v for k, v in values.items() if k not in ("campaign", "time")})
        if self.dialect in ("postgresql", "sqlite"):
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as upsert
            else:
                from sqlalchemy.dialects.sqlite import insert as upsert
            statement = (upsert(results).values(**values)
                         .on_conflict_do_nothing(index_elements=[results.c.call_key]).returning(results.c.id))
            with self.engine.begin() as conn:
                new_id = conn.execute(statement).scalar()
                # PostgreSQL waits for a concurrent insert of the same key to commit before
                # doing nothing, so the row is visible to this next statement.
                return new_id if new_id is not None else self._id_for(conn, call_key)
        try:  # other databases: insert, and on the unique key's refusal read the first record
            with self.engine.begin() as conn:
                return conn.execute(insert(results).values(**values)).inserted_primary_key[0]
        except IntegrityError:
            with self.engine.connect() as conn:
                found = self._id_for(conn, call_key, required=False)
            if found is None:
                raise
            return found

    @staticmethod
    def _id_for(conn, call_key: str, required: bool = True) -> int | None:
        query = select(results.c.id).where(results.c.call_key == call_key)
        return conn.execute(query).scalar_one() if required else conn.execute(query).scalar()

    def result_for(self, call_key: str) -> Result | None:
        """The recorded result of one experiment call: how a restarted researcher avoids
        running an experiment twice."""
        rows = self._results(select(results).where(results.c.call_key == call_key))
        return rows[0] if rows else None

    def results(self, researcher: str | None = None, testbed: str | None = None) -> list[Result]:
        """The campaign's results, oldest first; only one researcher's, or one testbed's, when
        asked (a researcher asks for its own every step: the filter runs in the store)."""
        q = select(results).where(results.c.campaign == self.campaign)
        if researcher is not None:
            q = q.where(results.c.researcher == researcher)
        if testbed is not None:
            q = q.where(results.c.testbed == testbed)
        return self._results(q.order_by(results.c.id))

    def add_flag(self, result_id: int, flag: str) -> None:
        """Append a flag (comma-separated, each once) to a result; shown on the leaderboard.
        One UPDATE, so flags added at once by several processes are all kept."""
        current = func.coalesce(results.c.flags, "")
        padded = literal(",") + current + literal(",")
        new_flags = case((current == "", flag),
                         (padded.contains(f",{flag},", autoescape=True), current),
                         else_=current + literal(",") + literal(flag))
        with self.engine.begin() as conn:
            conn.execute(results.update().where(results.c.id == result_id).values(flags=new_flags))

    def disqualify(self, result_id: int, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(results.update().where(results.c.id == result_id).values(disqualified=reason))

    def leaderboard(self, testbed: str | None = None, limit: int = 20) -> list[Result]:
        """Best validation PGR first (a result without one last), disqualified results left out."""
        q = select(results).where(results.c.campaign == self.campaign, results.c.disqualified.is_(None))
        if testbed:
            q = q.where(results.c.testbed == testbed)
        return self._results(q.order_by(results.c.pgr.desc().nulls_last(), results.c.id).limit(limit))


def _add_kind(conn) -> None:
    """Give a `results` table made before the `kind` column its column, in the caller's
    transaction (which holds the schema lock): the kind is derived, this once, from the
    `idea:<name>` label such stores hold, and the prefix is dropped from the name."""
    if "kind" in {c["name"] for c in inspect(conn).get_columns("results")}:
        return
    conn.execute(text(f"ALTER TABLE results ADD COLUMN kind TEXT NOT NULL DEFAULT '{METHOD}'"))
    prefix = f"{IDEA}:"
    conn.execute(results.update().where(results.c.idea.startswith(prefix, autoescape=True))
                 .values(kind=IDEA, idea=func.substr(results.c.idea, len(prefix) + 1)))
