"""Helpers for tests/test_postgres.py that run in other processes (spawned processes import
this small module, not the test module)."""

from __future__ import annotations

_barrier = None


def set_barrier(barrier) -> None:
    """Pool initializer: the barrier every writer waits at (one task per process)."""
    global _barrier
    _barrier = barrier


def racing_writer(url: str, campaign: str, index: int, shared_keys: list[str]) -> dict:
    """One researcher process: once every process is ready, opens its own Forum on a store
    nobody has created the tables of yet (so the processes race to create the schema), then
    records the shared call keys (every process records them all), its own keys, a post, and
    a flag on the first shared result."""
    from aar_ray.forum import Forum

    _barrier.wait(timeout=120)
    forum = Forum(url, campaign)
    ids = {}
    for key in shared_keys:
        ids[key] = forum.record_result(f"r{index}", "tax-small", f"idea-{key}", key, [1, 2], 0.1 * index, 0.8,
                                       [f"run-{index}"])
    own = [forum.record_result(f"r{index}", "tax-small", "own", f"{campaign}/r{index}/{j}", [1], 0.5, 0.8, [])
           for j in range(5)]
    forum.post(f"r{index}", f"note from r{index}", "body")
    forum.add_flag(ids[shared_keys[0]], f"flag{index}")
    forum.close()
    return {"ids": ids, "own": own}
