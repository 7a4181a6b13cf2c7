"""A memory cgroup per sandbox run, so that `total_memory_mb` caps all of its processes together.

rlimits are per process; only a cgroup counts a whole tree, and it also counts what the tree
keeps in its private tmpfs mounts (/tmp, /dev/shm), whose pages are charged to the cgroup of
the process that wrote them. Each run gets a fresh child of this process's own memory cgroup
(cgroup v1's memory controller where the machine has it, else cgroup v2), with the cap and no
swap, and bwrap is started inside it (a tiny shell writes its own pid into the cgroup and execs
bwrap), so every process of the sandbox is born there. The cgroup is removed after the run.

Creating cgroups needs write access to this process's cgroup: root (with cgroupfs mounted
writable), or a delegated subtree. Where there is none, `create` returns None, the caller falls
back to the per-process rlimits, and a log line says so once per process for each reason.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aar_ray.resources import pid_alive

log = logging.getLogger(__name__)

NAME_PREFIX = "aar-sandbox-"
# After the sandbox's main process is gone, how long its pid namespace may take to empty.
EMPTY_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class Mount:
    fstype: str
    root: str  # the part of the hierarchy this mount shows
    mountpoint: str
    options: frozenset[str]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for octal, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(octal, char)
    return field


def _cgroup_mounts() -> list[Mount]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(Mount(tail[0], _unescape(fields[3]), _unescape(fields[4]), frozenset(tail[2].split(","))))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """Controller name -> this process's cgroup path in that hierarchy ("" for cgroup v2)."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _directory(mount: Mount, path: str) -> Path | None:
    """Where cgroup `path` is on the filesystem, if this mount shows it."""
    relative = os.path.relpath(path, mount.root)
    if relative == ".." or relative.startswith("../"):
        return None
    return Path(os.path.normpath(os.path.join(mount.mountpoint, relative)))


@functools.lru_cache(maxsize=1)
def memory_parent() -> tuple[Path, int] | str:
    """(this process's memory cgroup directory, cgroup version), or why there is none."""
    try:
        own, mounts = _own_cgroups(), _cgroup_mounts()
    except OSError as error:
        return f"cannot read this process's cgroups: {error}"
    return find_memory_cgroup(own, mounts)


def find_memory_cgroup(own: dict[str, str], mounts: list[Mount]) -> tuple[Path, int] | str:
    """Where the memory cgroup `own` names is seen through `mounts` (as in a container, whose
    hierarchy is mounted from its own cgroup down), with its version; or why it is not."""
    if "memory" in own:  # cgroup v1 (or hybrid): the controller has its own hierarchy
        for mount in mounts:
            if mount.fstype == "cgroup" and "memory" in mount.options:
                directory = _directory(mount, own["memory"])
                if directory is not None and directory.is_dir():
                    return directory, 1
        return "this process's cgroup v1 memory hierarchy is not mounted where it can see it"
    if "" in own:
        for mount in mounts:
            if mount.fstype == "cgroup2":
                directory = _directory(mount, own[""])
                if directory is not None and directory.is_dir():
                    return directory, 2
    return "no memory cgroup controller found for this process"


@functools.cache  # once per process for each reason
def _fall_back(reason: str) -> None:
    log.warning("sandbox: %s; total_memory_mb is not enforced, only the per-process limits "
                "(memory_mb, max_processes) hold", reason)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


class MemoryCgroup:
    """One run's cgroup. Use `create`; call `remove` once the command is over."""

    def __init__(self, path: Path, version: int) -> None:
        self.path, self.version = path, version

    @classmethod
    def create(cls, limit_bytes: int) -> MemoryCgroup | None:
        parent = memory_parent()
        if isinstance(parent, str):
            _fall_back(parent)
            return None
        directory, version = parent
        _remove_abandoned(directory)
        group = cls(directory / f"{NAME_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}", version)
        try:
            group.path.mkdir()
        except OSError as error:
            _fall_back(f"cannot create a memory cgroup in {directory} ({error.strerror})")
            return None
        try:
            group._set_limit(limit_bytes)
        except OSError as error:
            group.remove()
            _fall_back(f"cannot set a memory limit on a cgroup in {directory} ({error.strerror})")
            return None
        return group

    def _set_limit(self, limit_bytes: int) -> None:
        if self.version == 1:
            _write(self.path / "memory.limit_in_bytes", str(limit_bytes))
            # Without these the cgroup could push its memory out to swap instead of being capped.
            # Only kernels that account swap have memsw; swappiness 0 keeps a memcg off swap.
            self._write_if_present("memory.memsw.limit_in_bytes", str(limit_bytes))
            self._write_if_present("memory.swappiness", "0")
        else:
            if not (self.path / "memory.max").exists():
                # The parent's subtree must have the controller; that fails while the parent
                # holds processes itself (cgroup v2's "no internal processes" rule).
                _write(self.path.parent / "cgroup.subtree_control", "+memory")
            _write(self.path / "memory.max", str(limit_bytes))
            self._write_if_present("memory.swap.max", "0")
            self._write_if_present("memory.oom.group", "1")  # one OOM kill takes the whole run

    def _write_if_present(self, name: str, value: str) -> None:
        try:
            _write(self.path / name, value)
        except OSError:
            pass

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this cgroup: a shell joins it, then execs the command."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def oom_kills(self) -> int:
        """How many processes the kernel killed to keep the cgroup under its limit."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            lines = (self.path / name).read_text().splitlines()
        except OSError:
            return 0
        counts = dict(line.split() for line in lines if len(line.split()) == 2)
        return int(counts.get("oom_kill", 0))

    def peak_bytes(self) -> int | None:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def pids(self) -> list[int]:
        try:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        """SIGKILL every process still in the cgroup. Each is pinned with a pidfd and checked to
        be a member before the signal, so a reused pid never hits an unrelated process."""
        for pid in self.pids():
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue  # already gone
            try:
                if pid in self.pids():
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)

    def remove(self) -> None:
        """Wait for the sandbox's processes to be gone (the kernel empties a pid namespace
        asynchronously), kill any left after a grace period, and delete the cgroup."""
        for grace in (EMPTY_WAIT_SECONDS, EMPTY_WAIT_SECONDS):
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not self.pids():
                break
            self.kill_all()
        for _ in range(100):  # the last exit can lag cgroup.procs by a moment
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)
        log.warning("sandbox: could not remove cgroup %s", self.path)


def _remove_abandoned(directory: Path) -> None:
    """Delete empty run cgroups left by processes of ours that died before cleaning up.
    rmdir refuses a cgroup with processes in it, so a live run's is never touched."""
    try:
        children = [child for child in directory.iterdir() if child.name.startswith(NAME_PREFIX)]
    except OSError:
        return
    for child in children:
        owner = child.name[len(NAME_PREFIX):].split("-")[0]
        if not owner.isdigit() or int(owner) == os.getpid() or pid_alive(int(owner)):
            continue
        try:
            child.rmdir()
        except OSError:
            pass
