"""Run a command with a wall-clock limit and bounded output capture.

The command's output is read incrementally as it arrives; past the cap it is still read (so
the command never blocks on a full pipe) but thrown away, so a command printing gigabytes
costs CPU time, not memory. On timeout the whole process group is killed; bwrap's
--die-with-parent then takes the sandbox's pid namespace, and every process in it, down.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Callable, Iterator, Mapping, Sequence

READ_CHUNK = 64 * 1024
# After a kill, how long to wait for the pipes to close before giving up on them.
DRAIN_AFTER_KILL_SECONDS = 5.0


@dataclass
class CappedBuffer:
    limit: int
    kept: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def feed(self, chunk: bytes) -> None:
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        if self.dropped:
            text += f"\n[sandbox: output truncated, {self.dropped} more bytes not shown]\n"
        return text


@dataclass(frozen=True)
class CapturedRun:
    returncode: int
    stdout: CappedBuffer
    stderr: CappedBuffer
    timed_out: bool
    wall_seconds: float
    stopped_because: str | None = None  # why the watchdog stopped it, if it did


# A check polled while the command runs: a reason to stop it, or None to let it go on.
Watchdog = Callable[[], "str | None"]


@contextmanager
def stdin_source(stdin: bytes | str | None) -> Iterator[IO[bytes] | int]:
    """A file holding `stdin` (so we never block writing to a pipe), or /dev/null."""
    if stdin is None:
        yield subprocess.DEVNULL
        return
    data = stdin.encode() if isinstance(stdin, str) else stdin
    with tempfile.TemporaryFile() as source:
        source.write(data)
        source.seek(0)
        yield source


def kill_process_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pump_output(
    process: subprocess.Popen,
    buffers: dict[int, CappedBuffer],
    deadline: float,
    watchdog: Watchdog | None = None,
    poll_seconds: float = 0.1,
) -> tuple[bool, str | None]:
    """Read both pipes until they close or the deadline passes, asking `watchdog` every
    `poll_seconds`; returns (timed out, the watchdog's reason to stop, if it gave one)."""
    timed_out, stopped_because = False, None
    with selectors.DefaultSelector() as selector:
        for pipe in (process.stdout, process.stderr):
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if timed_out:
                    break  # killed, and the pipes still did not close: stop waiting
                timed_out = True
                kill_process_group(process)
                deadline = time.monotonic() + DRAIN_AFTER_KILL_SECONDS
                continue
            if watchdog is not None and stopped_because is None and not timed_out:
                stopped_because = watchdog()
                if stopped_because is not None:
                    kill_process_group(process)
                    deadline = min(deadline, time.monotonic() + DRAIN_AFTER_KILL_SECONDS)
            wait = remaining if watchdog is None or stopped_because else min(remaining, poll_seconds)
            for key, _ in selector.select(timeout=wait):
                chunk = os.read(key.fd, READ_CHUNK)
                if chunk:
                    buffers[key.fd].feed(chunk)
                else:
                    selector.unregister(key.fileobj)
    return timed_out, stopped_because


def run_capped(
    argv: Sequence[str],
    *,
    stdin: bytes | str | None,
    env: Mapping[str, str],
    wall_seconds: float,
    max_output_bytes: int,
    pass_fds: Sequence[int] = (),
    watchdog: Watchdog | None = None,
    poll_seconds: float = 0.1,
) -> CapturedRun:
    started = time.monotonic()
    deadline = started + wall_seconds
    with stdin_source(stdin) as source:
        process = subprocess.Popen(
            list(argv),
            stdin=source,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            pass_fds=tuple(pass_fds),
            start_new_session=True,  # its own process group, so a timeout can kill it whole
        )
    stdout, stderr = CappedBuffer(max_output_bytes), CappedBuffer(max_output_bytes)
    try:
        buffers = {process.stdout.fileno(): stdout, process.stderr.fileno(): stderr}
        timed_out, stopped_because = pump_output(process, buffers, deadline, watchdog, poll_seconds)
        timed_out = wait_until(process, deadline) or timed_out
    finally:
        # Also on KeyboardInterrupt or any error here: never leave a sandbox running.
        if process.poll() is None:
            kill_process_group(process)
            process.wait()
        process.stdout.close()
        process.stderr.close()
    return CapturedRun(
        returncode=process.returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        wall_seconds=time.monotonic() - started,
        stopped_because=stopped_because,
    )


def wait_until(process: subprocess.Popen, deadline: float) -> bool:
    """Wait for exit; kill at the deadline. True if it had to be killed."""
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
        return False
    except subprocess.TimeoutExpired:
        kill_process_group(process)
        process.wait()
        return True
