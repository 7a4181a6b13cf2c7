"""A researcher's checkpoint: an append-only log of what happened, plus a small state file.

``<state_dir>/log.jsonl`` holds one JSON record a line, each flushed and fsync'd before the
researcher goes on:

- ``{"seq": n, "kind": "message", "message": {...}}``: a message of the conversation (the neutral
  format of `aar_ray.agents.backends`), with extra fields kept out of the context (``reasoning``);
- ``{"seq": n, "kind": "clear", "seqs": [...]}``: old bulky tool results (and tool-call
  arguments) replaced by placeholders;
- ``{"seq": n, "kind": "compact", "upto": m, "summary": "...", "by": "model" | "digest"}``: every
  message up to seq ``m`` replaced by one summary message;
- ``{"seq": n, "kind": "truncate", "target": m, "keep": k}``: a recent tool result cut to ``k``
  characters because it alone did not fit the window;
- ``{"seq": n, "kind": "notes", "text": "..."}``: the researcher's notes file changed.

Replaying the records in order rebuilds exactly the context the researcher had
(`aar_ray.agents.context.Context.replay`), and the log keeps every message in full, so nothing is
lost to compaction (`read_history`). ``<state_dir>/state.json`` (format 2) holds only counters,
spend and settings, so what is written per step does not grow with the step number: one line per
message and one small file.

A crash can leave a last line half written; it is cut off when the log is next opened. A
checkpoint of the old format (the whole conversation in ``state.json``) is converted on first
load; one this code cannot read fails with `CheckpointError` saying what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

FORMAT = 2
LOG_NAME = "log.jsonl"
STATE_NAME = "state.json"
NOTES_FILE = "notes.md"


class CheckpointError(RuntimeError):
    pass


def _fsync_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a crash leaves the old or the new file, not half."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class Checkpoint:
    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir)
        self.state_path = self.dir / STATE_NAME
        self.log_path = self.dir / LOG_NAME
        self.next_seq = 0
        self.bytes_written = 0  # log lines and state files written by this process
        self._log = None

    # -- reading -----------------------------------------------------------------------------
    def load_state(self) -> dict | None:
        """The state file (converting an old checkpoint first), or None for a fresh researcher."""
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{self.state_path}: unreadable checkpoint ({err}); move it away to "
                                  f"start this researcher afresh") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.state_path}: not a researcher checkpoint")
        if state.get("format") == FORMAT:
            return state
        if "format" not in state and isinstance(state.get("messages"), list) and "steps" in state:
            return self._convert(state)
        raise CheckpointError(
            f"{self.state_path}: checkpoint format {state.get('format', 'unknown')!r}, but this version "
            f"reads format {FORMAT} and converts the old one (the whole conversation in state.json, "
            f"with 'messages' and 'steps'); move {self.dir} away to start this researcher afresh")

    def _convert(self, state: dict) -> dict:
        """Old format -> log + small state. The old state file stays the source until the new one
        replaces it, so a crash here just converts again."""
        lines = [json.dumps({"seq": i, "kind": "message", "message": m}, ensure_ascii=False)
                 for i, m in enumerate(state.pop("messages"))]
        _fsync_write(self.log_path, ("\n".join(lines) + "\n").encode() if lines else b"")
        state["format"] = FORMAT
        state["converted_from"] = 1
        _fsync_write(self.state_path, json.dumps(state).encode())
        return state

    def records(self, repair: bool = False) -> Iterator[dict]:
        """Every record of the log in order. A last line a crash left half written is skipped, and
        with `repair` (only the researcher that owns the log) cut off."""
        if not self.log_path.exists():
            return
        good_end = 0
        with open(self.log_path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    record = None
                if record is None:
                    rest = f.read()
                    if rest.strip():
                        raise CheckpointError(f"{self.log_path}: record at byte {good_end} is corrupt "
                                              f"and is not the last one; the log cannot be replayed")
                    break
                good_end += len(line)
                self.next_seq = max(self.next_seq, int(record["seq"]) + 1)
                yield record
        if repair and good_end < self.log_path.stat().st_size:
            with open(self.log_path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())

    # -- writing -----------------------------------------------------------------------------
    def append(self, kind: str, **fields) -> int:
        """Append one record (durably) and return its seq."""
        seq = self.next_seq
        line = (json.dumps({"seq": seq, "kind": kind, **fields}, ensure_ascii=False) + "\n").encode()
        if self._log is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self._log.write(line)
        self._log.flush()
        os.fsync(self._log.fileno())
        self.next_seq += 1
        self.bytes_written += len(line)
        return seq

    def save_state(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps({**state, "format": FORMAT, "log": LOG_NAME}).encode()
        _fsync_write(self.state_path, data)
        self.bytes_written += len(data)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def read_history(state_dir: str | Path) -> Iterator[dict]:
    """Every message a researcher ever had in its conversation, in order and in full (as first
    recorded: later clearing, truncation and compaction do not change what is returned).
    Reads old-format checkpoints too."""
    checkpoint = Checkpoint(state_dir)
    if checkpoint.state_path.exists() and not checkpoint.log_path.exists():
        state = json.loads(checkpoint.state_path.read_text())
        yield from state.get("messages") or []  # an old checkpoint, not converted yet
        return
    for record in checkpoint.records():
        if record["kind"] == "message":
            yield record["message"]


def final_notes(state_dir: str | Path) -> str:
    """A researcher's notes file as it is now (its final notes once it stopped), or "" when it
    kept none. For the campaign report."""
    state_dir = Path(state_dir)
    candidates = []
    state_path = state_dir / STATE_NAME
    if state_path.exists():
        try:
            notes_path = json.loads(state_path.read_text()).get("notes_path")
        except (OSError, ValueError, AttributeError):
            notes_path = None
        if notes_path:
            candidates.append(Path(notes_path))
    candidates.append(state_dir / "workspace" / NOTES_FILE)
    for path in candidates:
        if path.is_file() and not path.is_symlink():
            return path.read_text(errors="replace")
    last = ""
    for record in Checkpoint(state_dir).records():  # the workspace is gone: the last recorded notes
        if record["kind"] == "notes":
            last = record["text"]
    return last
