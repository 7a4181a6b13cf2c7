"""The shared store researchers meet in: forum posts, shared idea code, and scored results.

One SQL database for all actors — sqlite under the aar home by default, any SQLAlchemy URL
(e.g. postgresql://...) on a cluster. The leaderboard is a query over `results`, which only
experiment code that has been through the scorer writes; researchers read it, never write it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine,
                        event, func, insert, or_, select)

metadata = MetaData()

posts = Table(
    "posts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign", String(128), index=True), Column("author", String(128), index=True),
    Column("time", Float), Column("title", String(512)), Column("body", Text),
    Column("run_ids", Text),  # JSON list of MLflow run ids the post is about
    Column("code_refs", Text),  # JSON list of shared-code ids it builds on
)
shared_code = Table(
    "shared_code", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign", String(128), index=True), Column("author", String(128)),
    Column("time", Float), Column("name", String(256)), Column("code", Text),
)
results = Table(
    "results", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign", String(128), index=True), Column("researcher", String(128), index=True),
    Column("time", Float), Column("testbed", String(128)), Column("idea", String(256)),
    Column("code_ref", Integer, nullable=True), Column("call_key", String(256), unique=True),
    Column("seeds", String(256)), Column("pgr", Float), Column("transfer_acc", Float),
    Column("run_ids", Text), Column("flags", Text, default=""),
    Column("disqualified", Text, nullable=True), Column("gpu_seconds", Float, default=0.0),
    # What researchers were shown: the scorer's Ladder value when this result raised the
    # campaign's best, else NULL. `pgr` is the record (operator side), never shown to them.
    Column("shown_pgr", Float, nullable=True),
)


def default_url(home: str | Path) -> str:
    return f"sqlite:///{Path(home).resolve() / 'forum.db'}"


class Forum:
    def __init__(self, url: str, campaign: str):
        self.url, self.campaign = url, campaign
        self.engine = create_engine(url)
        if url.startswith("sqlite"):
            # Many actors write at once: wait for the lock instead of failing, and let readers
            # run beside the writer.
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(conn, _):
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=30000")
        metadata.create_all(self.engine)

    def _insert(self, table: Table, **values) -> int:
        with self.engine.begin() as conn:
            return conn.execute(insert(table).values(campaign=self.campaign, time=time.time(),
                                                     **values)).inserted_primary_key[0]

    def _rows(self, query) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # --- posts ------------------------------------------------------------------------------
    def post(self, author: str, title: str, body: str, run_ids: list[str] = (),
             code_refs: list[int] = ()) -> int:
        return self._insert(posts, author=author, title=title, body=body,
                            run_ids=json.dumps(list(run_ids)), code_refs=json.dumps(list(code_refs)))

    def read_posts(self, limit: int = 20, query: str | None = None) -> list[dict]:
        """Newest first; `query` matches title or body, case-insensitively."""
        q = select(posts).where(posts.c.campaign == self.campaign)
        if query:
            pattern = f"%{query.lower()}%"
            q = q.where(or_(func.lower(posts.c.title).like(pattern), func.lower(posts.c.body).like(pattern)))
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
                      flags: str = "", gpu_seconds: float = 0.0, shown_pgr: float | None = None) -> int:
        return self._insert(results, researcher=researcher, testbed=testbed, idea=idea,
                            call_key=call_key, seeds=",".join(map(str, seeds)), pgr=pgr,
                            transfer_acc=transfer_acc, run_ids=json.dumps(run_ids),
                            code_ref=code_ref, flags=flags, gpu_seconds=gpu_seconds, shown_pgr=shown_pgr)

    def result_for(self, call_key: str) -> dict | None:
        """The recorded result of one experiment call: how a restarted researcher avoids
        running an experiment twice."""
        rows = self._rows(select(results).where(results.c.call_key == call_key))
        return rows[0] if rows else None

    def results(self) -> list[dict]:
        return self._rows(select(results).where(results.c.campaign == self.campaign).order_by(results.c.id))

    def add_flag(self, result_id: int, flag: str) -> None:
        """Append a flag (comma-separated, each once) to a result; shown on the leaderboard."""
        with self.engine.begin() as conn:
            current = conn.execute(select(results.c.flags).where(results.c.id == result_id)).scalar() or ""
            flags = [f for f in current.split(",") if f]
            if flag not in flags:
                conn.execute(results.update().where(results.c.id == result_id)
                             .values(flags=",".join([*flags, flag])))

    def disqualify(self, result_id: int, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(results.update().where(results.c.id == result_id).values(disqualified=reason))

    def leaderboard(self, testbed: str | None = None, limit: int = 20) -> list[dict]:
        """Best validation PGR first, disqualified results left out."""
        q = select(results).where(results.c.campaign == self.campaign, results.c.disqualified.is_(None))
        if testbed:
            q = q.where(results.c.testbed == testbed)
        return self._rows(q.order_by(results.c.pgr.desc(), results.c.id).limit(limit))
