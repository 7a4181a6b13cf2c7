"""Sandbox for agent shell commands and agent-written experiment code.

Threat model: the code is written by a researcher agent we do not trust to respect the rules
of the experiment, not by a determined kernel attacker. It must not be able to read the
sealed labels (or the code that decides them), reach the network (other Ray actors, MLflow,
model APIs), see the host's environment (API keys), processes or file layout, or exhaust the
machine. Defences, from bubblewrap plus a small launcher and this process: an empty root with
only the system directories, the Python installation, the caller's read-only paths and one
writable workspace mounted; masks over hidden paths inside those; private network, pid, ipc
and uts namespaces; a whitelisted environment; an unprivileged user in a per-run user namespace
(so RLIMIT_NPROC applies even when the host side is root); rlimits on memory, CPU, processes and
file size; a memory cgroup per run capping all its processes and tmpfs together; pinning to
`cpus` cores; a seccomp filter against nested user namespaces and against re-pinning; Landlock
keeping /proc's per-process files unreadable (the mount table would name host paths); a
wall-clock timeout; capped output capture; a quota on the workspace's bytes and entries (see
`SandboxLimits`). Not covered: kernel exploits beyond that filter, covert timing channels; and
where this process may not create cgroups (not root, no delegation) the memory cap falls back
to the per-process rlimits, where the kernel has no Landlock the command gets no /proc at all.

Usage:
    sandbox = Sandbox(workspace, readonly=[repo, public_data], hidden=[repo / ".aar/sealed"])
    result = sandbox.run_python(workspace / "idea.py", ["--seed", "0"])
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import shutil
import signal
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .cgroup import MemoryCgroup
from .launcher import landlock_abi
from .limits import MIB, QUOTA_POLL_SECONDS, SandboxLimits
from .mounts import bwrap_command, is_within
from .process import Watchdog, run_capped
from .quota import WorkspaceUsage, WorkspaceWatch, disk_usage, over_quota_note, workspace_usage

log = logging.getLogger(__name__)

__all__ = [
    "MIB",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "check_available",
    "disk_usage",
    "workspace_usage",
]

APT_PACKAGE = "bubblewrap"
# The user the sandboxed code runs as (Debian's "nobody"/"nogroup"): no host files of its own.
SANDBOX_UID = 65534
SANDBOX_GID = 65534
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing, or the kernel/container refuses the namespaces it needs."""


@dataclass(frozen=True)
class SandboxResult:
    """How a command ended. stdout/stderr are decoded as UTF-8 (invalid bytes replaced) and,
    when `truncated`, end with a marker saying how many bytes were dropped."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool
    wall_seconds: float
    # e.g. the workspace quota or the memory cap; then stderr says so too, and returncode != 0
    stopped_because: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.stopped_because is None


def running_as_root() -> bool:
    return os.geteuid() == 0


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap is not installed (no `bwrap` on PATH); the sandbox needs it. "
            f"Install the Debian package: apt-get install -y {APT_PACKAGE}"
        )
    return path


_available = False


def check_available() -> None:
    """Raise SandboxUnavailable unless a trivial command runs in a real sandbox here.

    Runs the full setup once per process (bwrap, namespaces, the launcher's user switch), since
    "bwrap is installed" is not enough: containers and hardened kernels may refuse namespaces.
    """
    global _available
    if _available:
        return
    find_bwrap()
    with tempfile.TemporaryDirectory(prefix="aar-sandbox-probe-") as workspace:
        probe = Sandbox(Path(workspace), limits=SandboxLimits(wall_seconds=60))
        result = probe._run_unchecked([sys.executable, "-c", "print('sandbox-ok')"])
    if result.stdout.strip() != "sandbox-ok":
        raise SandboxUnavailable(
            "bubblewrap is installed but could not start a sandbox here "
            f"(exit {result.returncode}): {result.stderr.strip()[:2000]}\n"
            "It needs namespaces: as root, CAP_SYS_ADMIN (in Docker: --privileged or "
            "--security-opt seccomp=unconfined); otherwise unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0). "
            f"The Debian package is {APT_PACKAGE}."
        )
    _available = True


@functools.lru_cache(maxsize=2)
def proc_guard(as_root: bool) -> str | None:
    """How the command is kept from reading the mount table in /proc (see launcher.py):
    "landlock", else "cover" (as root: the launcher needs /proc, then covers it), else None
    (no /proc is mounted)."""
    if landlock_abi() >= 1:
        return "landlock"
    log.warning("sandbox: the kernel has no Landlock; sandboxed commands get no /proc")
    return "cover" if as_root else None


def give_to_sandbox_user(workspace: Path, skip: Sequence[Path]) -> None:
    """Make the workspace writable by the unprivileged sandbox user (host side is root).

    Files the host writes there (idea code, inputs) are owned by root and would be read-only
    inside. Symlinks are never followed (lchown, no descent), so a link the sandbox planted
    cannot make us chown a host file; hard-linked files are skipped for the same reason.
    """
    for directory, subdirectories, files in os.walk(workspace):
        subdirectories[:] = [d for d in subdirectories if Path(directory, d) not in skip]
        for path in [directory, *(os.path.join(directory, name) for name in files)]:
            info = os.lstat(path)
            if (info.st_uid, info.st_gid) == (SANDBOX_UID, SANDBOX_GID):
                continue
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                continue
            os.lchown(path, SANDBOX_UID, SANDBOX_GID)


class Sandbox:
    """Runs commands confined to `workspace` (writable) and `readonly` paths.

    Paths appear inside at their host paths (symlinks resolved). `hidden` paths are masked
    even when they lie inside a bound directory: a directory shows up empty and read-only, a
    file reads as empty. Readonly paths must be readable by an unprivileged user (world-
    readable), since that is who runs inside. Hide a bound repository's `.git` as well: its
    history holds every committed version of the files hidden here. `devices` are device
    nodes passed through as they are (e.g. /dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm for
    a GPU; then also set `memory_mb=None` and a larger `total_memory_mb`).

    /proc is the sandbox's own (its processes only), and only its directories can be listed:
    files under /proc/<pid> (status, cmdline, environ, mountinfo, ...) cannot be read, since
    the mount table names host paths; /proc/self/fd links still work, and so do a few
    machine-wide files (cpuinfo, meminfo, stat, ...: launcher.PROC_READABLE). Memory: `limits.total_memory_mb` caps the sandbox's
    processes together when this process can create a memory cgroup (root here); otherwise a
    log line says once that only the per-process rlimits apply (see `SandboxLimits`).

    `run` must be called from a thread that outlives the command: bwrap's --die-with-parent
    follows the thread that started it.
    """

    def __init__(
        self,
        workspace: Path,
        readonly: Sequence[Path] = (),
        limits: SandboxLimits | None = None,
        hidden: Sequence[Path] = (),
        devices: Sequence[Path] = (),
    ) -> None:
        self.workspace = Path(workspace).resolve()
        self.readonly = [Path(path).resolve() for path in readonly]
        self.hidden = [Path(path).resolve() for path in hidden]
        self.devices = [Path(path) for path in devices]
        self.limits = limits or SandboxLimits()
        if self.workspace in self.readonly:
            raise ValueError(f"{self.workspace} is both the workspace and a read-only path")
        if any(is_within(self.workspace, hidden_path) for hidden_path in self.hidden):
            raise ValueError(f"workspace {self.workspace} lies inside a hidden path")

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        """Run `argv` inside the sandbox, in the workspace, and wait for it.

        The environment inside is PATH, HOME (the workspace), LANG and TMPDIR, plus `env`;
        nothing is inherited from this process.
        """
        check_available()
        return self._run_unchecked(argv, stdin, env)

    def run_python(
        self,
        script_path: Path,
        args: Sequence[str] = (),
        stdin: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        """Run a script with this process's interpreter (and so its virtualenv)."""
        return self.run([sys.executable, str(script_path), *args], stdin=stdin, env=env)

    def _run_unchecked(
        self,
        argv: Sequence[str],
        stdin: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        if not argv:
            raise ValueError("empty command")
        missing = [path for path in self.readonly if not path.exists()]
        if missing:
            raise FileNotFoundError(f"read-only paths do not exist: {missing}")
        self.workspace.mkdir(parents=True, exist_ok=True)
        as_root = running_as_root()
        if as_root:
            give_to_sandbox_user(self.workspace, self.hidden)
        with open(os.devnull, "rb") as empty:
            return self._launch(argv, stdin, env, as_root, empty.fileno())

    def _launch(
        self,
        argv: Sequence[str],
        stdin: bytes | str | None,
        env: Mapping[str, str] | None,
        as_root: bool,
        empty_fd: int,
    ) -> SandboxResult:
        at_start = workspace_usage(self.workspace) if self._has_workspace_quota() else WorkspaceUsage(0, 0)
        proc = proc_guard(as_root)
        command = bwrap_command(
            bwrap=find_bwrap(),
            as_root=as_root,
            workspace=self.workspace,
            readonly=self.readonly,
            hidden=self.hidden,
            devices=self.devices,
            limits=self.limits,
            env=self._inside_environment(env),
            launcher_spec=self._launcher_spec(at_start, proc),
            command=argv,
            empty_fd=empty_fd,
            mount_proc=proc is not None,
        )
        total = self.limits.total_memory_mb
        cgroup = None if total is None else MemoryCgroup.create(total * MIB)
        try:
            captured = run_capped(
                command if cgroup is None else cgroup.command(command),
                stdin=stdin,
                # bwrap itself gets nothing of ours either (--clearenv covers the inside).
                env={"PATH": DEFAULT_PATH},
                wall_seconds=self.limits.wall_seconds,
                max_output_bytes=self.limits.max_output_bytes,
                pass_fds=[empty_fd],
                watchdog=self._watchdog(at_start, cgroup),
                poll_seconds=QUOTA_POLL_SECONDS,
            )
            # The kernel may have killed a process between the watchdog's last look and the end.
            stopped_because = captured.stopped_because or self._over_memory(cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()
        returncode = captured.returncode
        if stopped_because and returncode == 0:
            returncode = -signal.SIGKILL  # as if the watchdog had been in time to stop it
        stderr = captured.stderr.text()
        note = over_quota_note(self.limits, at_start)
        if stopped_because:
            stderr += f"\n[sandbox: stopped: {stopped_because}]\n"
        elif note is not None:
            stderr += f"\n[sandbox: {note}]\n"
        return SandboxResult(
            returncode=returncode,
            stdout=captured.stdout.text(),
            stderr=stderr,
            timed_out=captured.timed_out,
            truncated=bool(captured.stdout.dropped or captured.stderr.dropped),
            wall_seconds=captured.wall_seconds,
            stopped_because=stopped_because,
        )

    def _has_workspace_quota(self) -> bool:
        return self.limits.workspace_mb is not None or self.limits.workspace_files is not None

    def _watchdog(self, at_start: WorkspaceUsage, cgroup: MemoryCgroup | None) -> Watchdog | None:
        """What is checked while the command runs: the memory cap (one small file read, every
        poll) and the workspace quota (paced, see quota.py)."""
        checks: list[Watchdog] = []
        if cgroup is not None:
            checks.append(functools.partial(self._over_memory, cgroup))
        if self._has_workspace_quota():
            checks.append(WorkspaceWatch(self.workspace, self.limits, at_start))
        if not checks:
            return None

        def watchdog() -> str | None:
            return next((reason for reason in (check() for check in checks) if reason), None)

        return watchdog

    def _over_memory(self, cgroup: MemoryCgroup | None) -> str | None:
        """Stop a command once the kernel had to kill one of its processes to hold the memory
        cap: the rest would carry on without it, or hit the cap again."""
        if cgroup is None or cgroup.oom_kills() == 0:
            return None
        return (f"its processes together reached the memory cap of {self.limits.total_memory_mb} MiB "
                "(total_memory_mb; files in /tmp and /dev/shm count too) and the kernel killed one")

    def _inside_environment(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        interpreter_bin = str(Path(sys.executable).parent)  # the venv's bin: `python` is ours
        env = {
            "PATH": f"{interpreter_bin}:{DEFAULT_PATH}",
            "HOME": str(self.workspace),
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
        }
        env.update(extra or {})
        return env

    def _pick_cpus(self) -> list[int] | None:
        """`limits.cpus` of the cores this process may use, chosen at random so that many
        sandboxes spread over the machine instead of piling onto the first cores."""
        allowed = sorted(os.sched_getaffinity(0))
        if self.limits.cpus is None or self.limits.cpus >= len(allowed):
            return None
        return sorted(random.sample(allowed, self.limits.cpus))

    def _launcher_spec(self, workspace_at_start: WorkspaceUsage, proc: str | None) -> str:
        return json.dumps(
            {
                "uid": SANDBOX_UID,
                "gid": SANDBOX_GID,
                "cwd": str(self.workspace),
                "rlimits": self.limits.rlimits(workspace_at_start.bytes, workspace_at_start.entries),
                "cpus": self._pick_cpus(),
                "proc": proc,
            }
        )
