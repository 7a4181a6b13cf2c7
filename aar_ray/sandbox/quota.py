"""The workspace quota: how much the workspace holds, and the watchdog that keeps it in bounds.

The workspace is a bind mount of a host directory, so nothing in the kernel counts it for us
(project quotas need filesystem support we cannot assume): we walk it. A walk costs a few
microseconds per entry (a `stat` each, for the sizes), and the sandbox decides how many entries
there are, so the watchdog paces itself: it measures what each walk cost and waits long enough
that walking takes at most a small share of one core (`SCAN_SHARE`), however large the workspace.
Counting entries needs no `stat` (the directory listing says which are directories) and is
several times cheaper, so it runs more often than the full walk: a burst of empty files is seen
sooner than a burst of bytes, which each file's RLIMIT_FSIZE already bounds.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .limits import MIB, QUOTA_POLL_SECONDS, SandboxLimits

# Share of one core each kind of walk may take while a command runs (so at most twice this in
# all), and the longest wait between two walks, whatever they cost.
SCAN_SHARE = 0.02
QUOTA_MAX_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class WorkspaceUsage:
    bytes: int  # per file the larger of its allocated blocks and its apparent size
    entries: int  # files, directories, links: every name under the root

    def over(self, limits: SandboxLimits) -> bool:
        return ((limits.workspace_mb is not None and self.bytes > limits.workspace_mb * MIB)
                or (limits.workspace_files is not None and self.entries > limits.workspace_files))


def workspace_usage(root: Path, sizes: bool = True, stop_above_entries: int | None = None) -> WorkspaceUsage:
    """What the tree under `root` holds, symlinks not followed.

    A file counts the larger of its blocks and its apparent size (`st_size`): a sparse file
    holds almost no blocks but is as large as it says to anything that copies or reads it.
    A file with several hard links counts its bytes once. Without `sizes` only entries are
    counted (no `stat` at all; `bytes` is 0). The walk stops early, returning what it has seen,
    once there are more than `stop_above_entries` entries: the caller only needs to know that.
    """
    entries, total, stack = 0, 0, [str(root)]
    linked: set[tuple[int, int]] = set()
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                found = list(listing)
        except OSError:  # removed or unreadable meanwhile
            continue
        entries += len(found)
        for entry in found:
            try:
                if not sizes:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in linked:
                    continue
                linked.add((info.st_dev, info.st_ino))
            total += max(info.st_blocks * 512, info.st_size)
        if stop_above_entries is not None and entries > stop_above_entries:
            break
    return WorkspaceUsage(bytes=total, entries=entries)


def disk_usage(root: Path) -> int:
    """Bytes the files under `root` count against a quota (see `workspace_usage`)."""
    return workspace_usage(root).bytes


def next_poll(cost_seconds: float) -> float:
    """Seconds to wait after a walk that took `cost_seconds`, so walks stay within SCAN_SHARE."""
    return min(QUOTA_MAX_POLL_SECONDS, max(QUOTA_POLL_SECONDS, cost_seconds / SCAN_SHARE))


class WorkspaceWatch:
    """The quota watchdog for one command (see `SandboxLimits`): call it every poll; it walks
    the workspace when a walk is due and says why to stop the command, if it must.

    A command that starts over a quota (to read or delete) may go on as long as it does not add
    to what the workspace held when it started.
    """

    def __init__(self, root: Path, limits: SandboxLimits, at_start: WorkspaceUsage,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root, self.limits, self.clock = root, limits, clock
        self.allowed_bytes = None if limits.workspace_mb is None else max(limits.workspace_mb * MIB, at_start.bytes)
        self.allowed_entries = (None if limits.workspace_files is None
                                else max(limits.workspace_files, at_start.entries))
        # The caller has just walked it to get `at_start`: the first look can wait a poll.
        self.next_full = self.next_count = clock() + QUOTA_POLL_SECONDS

    def __call__(self) -> str | None:
        now = self.clock()
        if now >= self.next_full and self.allowed_bytes is not None:
            usage = self._walk(sizes=True)
            self.next_full = self.clock() + next_poll(self.clock() - now)
            self.next_count = max(self.next_count, self.clock() + QUOTA_POLL_SECONDS)
            return self._verdict(usage)
        if now >= self.next_count and self.allowed_entries is not None:
            usage = self._walk(sizes=False)
            self.next_count = self.clock() + next_poll(self.clock() - now)
            return self._verdict(usage)
        return None

    def _walk(self, sizes: bool) -> WorkspaceUsage:
        return workspace_usage(self.root, sizes=sizes, stop_above_entries=self.allowed_entries)

    def _verdict(self, usage: WorkspaceUsage) -> str | None:
        if self.allowed_entries is not None and usage.entries > self.allowed_entries:
            limit = self.limits.workspace_files
            if self.allowed_entries == limit:
                return (f"the workspace holds over {limit} files and directories, its quota "
                        "(workspace_files); delete files to write again")
            return (f"the workspace, already over its quota of {limit} files and directories "
                    "(workspace_files), got more; delete files to write again")
        if self.allowed_bytes is not None and usage.bytes > self.allowed_bytes:
            return (f"the workspace holds {usage.bytes / MIB:.0f} MiB, over its quota of {self.limits.workspace_mb} "
                    "MiB; delete files to write again")
        return None


def over_quota_note(limits: SandboxLimits, at_start: WorkspaceUsage) -> str | None:
    """What to tell a command that started with the workspace over a quota, or None."""
    if limits.workspace_mb is not None and at_start.bytes > limits.workspace_mb * MIB:
        return (f"the workspace is over its quota of {limits.workspace_mb} MiB: no file can grow until "
                "you delete files")
    if limits.workspace_files is not None and at_start.entries > limits.workspace_files:
        return (f"the workspace holds {at_start.entries} files and directories, over its quota of "
                f"{limits.workspace_files}: no file can be added or grow until you delete files")
    return None
