"""The forum's results as typed records, and stores made before the `kind` column: opened, they
get it, derived once from the `idea:` label they held; nothing else about them changes."""

import sqlite3
import threading

import pytest
from sqlalchemy import Column, Float, Integer, MetaData, Table, Text, create_engine, insert

from aar_ray.forum import Forum, Result, engine_url

OLD_ROWS = [  # as the forum wrote them before the kind column: ideas carried an `idea:` prefix
    dict(campaign="c", researcher="r1", time=1.0, testbed="tax", idea="idea:soft_vote", code_ref=1,
         call_key="c/r1/1", seeds="1,2", pgr=0.5, transfer_acc=0.8, run_ids='["run-a", "run-b"]',
         flags="ignores_teacher,x", disqualified=None, gpu_seconds=3.0, shown_pgr=0.5),
    dict(campaign="c", researcher="r2", time=2.0, testbed="tax", idea="vanilla_w2s:loss=soft", code_ref=None,
         call_key="c/r2/1", seeds="3", pgr=None, transfer_acc=0.7, run_ids="[]", flags="",
         disqualified=None, gpu_seconds=None, shown_pgr=None),
]


def _old_store(url: str) -> None:
    """The results table as the forum created it before the `kind` column, with OLD_ROWS."""
    old = MetaData()
    table = Table("results", old, Column("id", Integer, primary_key=True, autoincrement=True),
                  Column("campaign", Text), Column("researcher", Text), Column("time", Float),
                  Column("testbed", Text), Column("idea", Text), Column("code_ref", Integer, nullable=True),
                  Column("call_key", Text, unique=True), Column("seeds", Text), Column("pgr", Float),
                  Column("transfer_acc", Float), Column("run_ids", Text), Column("flags", Text),
                  Column("disqualified", Text, nullable=True), Column("gpu_seconds", Float),
                  Column("shown_pgr", Float, nullable=True))
    engine = create_engine(engine_url(url))
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(insert(table), OLD_ROWS)
    engine.dispose()


def _assert_migrated(forum: Forum) -> None:
    idea, method = forum.results()
    assert (idea.kind, idea.name, idea.label) == ("idea", "soft_vote", "idea:soft_vote")
    assert (method.kind, method.name, method.label) == ("method", "vanilla_w2s:loss=soft", "vanilla_w2s:loss=soft")
    assert idea.seeds == (1, 2) and idea.run_ids == ("run-a", "run-b") and idea.flags == ("ignores_teacher", "x")
    assert method.seeds == (3,) and method.run_ids == () and method.flags == () and method.gpu_seconds == 0.0
    assert idea.code_ref == 1 and idea.shown_pgr == 0.5 and method.pgr is None


def test_a_store_written_by_the_old_schema_opens_and_reads_its_kind(tmp_path):
    db = tmp_path / "forum.db"
    connection = sqlite3.connect(db)  # the old layout, written without SQLAlchemy
    connection.executescript("""
        CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, campaign TEXT, researcher TEXT,
            time FLOAT, testbed TEXT, idea TEXT, code_ref INTEGER, call_key TEXT UNIQUE, seeds TEXT,
            pgr FLOAT, transfer_acc FLOAT, run_ids TEXT, flags TEXT, disqualified TEXT,
            gpu_seconds FLOAT, shown_pgr FLOAT);
        INSERT INTO results (campaign, researcher, time, testbed, idea, code_ref, call_key, seeds, pgr,
            transfer_acc, run_ids, flags, gpu_seconds, shown_pgr)
        VALUES ('c', 'r1', 1.0, 'tax', 'idea:soft_vote', 1, 'c/r1/1', '1,2', 0.5, 0.8,
                '["run-a", "run-b"]', 'ignores_teacher,x', 3.0, 0.5),
               ('c', 'r2', 2.0, 'tax', 'vanilla_w2s:loss=soft', NULL, 'c/r2/1', '3', NULL, 0.7, '[]', '', NULL, NULL);
    """)
    connection.commit()
    connection.close()
    forum = Forum(f"sqlite:///{db}", "c")
    _assert_migrated(forum)
    # new results are recorded beside the old, and a second opening changes nothing
    forum.record_result("r3", "tax", "idea:not_a_prefix", "c/r3/1", [4], 0.2, 0.6, [], kind="method")
    again = Forum(f"sqlite:///{db}", "c")
    [*_, new] = again.results()
    assert (new.kind, new.name) == ("method", "idea:not_a_prefix")  # a name is never parsed
    assert [(r.kind, r.name) for r in again.results()[:2]] == [("idea", "soft_vote"), ("method", "vanilla_w2s:loss=soft")]
    assert [r.name for r in again.leaderboard("tax")] == ["soft_vote", "idea:not_a_prefix", "vanilla_w2s:loss=soft"]


def test_many_processes_opening_an_old_store_at_once_migrate_it_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'forum.db'}"
    _old_store(url)
    barrier, errors, forums = threading.Barrier(6), [], []

    def open_it():
        barrier.wait()
        try:
            forums.append(Forum(url, "c"))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(forums) == 6
    for forum in forums:
        _assert_migrated(forum)


def test_results_are_typed_records_built_from_their_row(tmp_path):
    forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "c")
    code = forum.share_code("r1", "soft_vote", "def run(ctx):\n    return None\n")
    first = forum.record_result("r1", "tax", "soft_vote", "c/r1/7", [1, 2], 0.4, 0.8, ["a", "b"], code,
                                gpu_seconds=2.5, shown_pgr=0.4, kind="idea")
    forum.record_result("r1", "tax", "vanilla_w2s", "c/r1/8", [3], float("nan"), 0.7, [])
    forum.add_flag(first, "ignores_teacher")
    result = forum.result_for("c/r1/7")
    assert isinstance(result, Result) and result == Result(
        id=first, campaign="c", researcher="r1", time=result.time, testbed="tax", kind="idea", name="soft_vote",
        call_key="c/r1/7", seeds=(1, 2), pgr=0.4, transfer_acc=0.8, run_ids=("a", "b"), code_ref=code,
        flags=("ignores_teacher",), disqualified=None, gpu_seconds=2.5, shown_pgr=0.4)
    assert result.label == "idea:soft_vote" and result.is_idea
    assert result.display()["seeds"] == "1,2" and result.display()["flags"] == "ignores_teacher"
    assert result.display()["idea"] == "idea:soft_vote"
    assert [r.kind for r in forum.results()] == ["idea", "method"] and forum.results()[1].pgr is None
    with pytest.raises(AttributeError):  # frozen: a reader cannot change what the store holds
        result.pgr = 1.0
    with pytest.raises(ValueError, match="kind"):
        forum.record_result("r1", "tax", "x", "c/r1/9", [1], 0.1, 0.1, [], kind="library")


def test_results_filtered_by_researcher_or_testbed_in_the_store(tmp_path):
    forum = Forum(f"sqlite:///{tmp_path / 'forum.db'}", "c")
    for key, (researcher, testbed) in enumerate([("r1", "tax"), ("r2", "tax"), ("r1", "pref"), ("r2", "pref")]):
        forum.record_result(researcher, testbed, "vanilla_w2s", f"c/{key}", [1], 0.1 * key, 0.7, [])
    Forum(f"sqlite:///{tmp_path / 'forum.db'}", "other").record_result("r1", "tax", "x", "o/1", [1], 0.9, 0.9, [])
    assert [r.call_key for r in forum.results(researcher="r1")] == ["c/0", "c/2"]
    assert [r.call_key for r in forum.results(testbed="pref")] == ["c/2", "c/3"]
    assert [r.call_key for r in forum.results(researcher="r2", testbed="tax")] == ["c/1"]
    assert len(forum.results()) == 4  # this campaign's only


@pytest.mark.slow
def test_a_postgres_store_of_the_old_schema_is_migrated_too(tmp_path):
    from aar_ray.forum.postgres import LocalPostgres, PostgresUnavailable

    try:
        server = LocalPostgres().start()
    except PostgresUnavailable as err:
        pytest.fail(f"cannot start PostgreSQL for the test: {err}")
    try:
        url = server.create_database("oldforum")
        _old_store(url)
        forums = [Forum(url, "c"), Forum(url, "c")]
        for forum in forums:
            _assert_migrated(forum)
            forum.close()
    finally:
        server.stop()
