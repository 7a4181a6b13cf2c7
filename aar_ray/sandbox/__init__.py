"""Sandbox for agent shell commands and agent-written experiment code.

Threat model: the code is written by a researcher agent we do not trust to respect the rules
of the experiment, not by a determined kernel attacker. It must not be able to read the
sealed labels (or the code that decides them), reach the network (other Ray actors, MLflow,
model APIs), see the host's environment (API keys) or processes, or exhaust the machine.
Defences, all from bubblewrap plus a small launcher: an empty root with only the system
directories, the Python installation, the caller's read-only paths and one writable workspace
mounted; masks over hidden paths inside those; private network, pid, ipc and uts namespaces;
a whitelisted environment; an unprivileged user in a per-run user namespace (so RLIMIT_NPROC
applies even when the host side is root); rlimits on memory, CPU, processes and file size;
pinning to `cpus` cores; a seccomp filter against nested user namespaces and against re-pinning;
a wall-clock timeout; capped output capture;
a disk quota on the workspace (see `SandboxLimits`). Not covered: kernel exploits beyond that
filter, covert timing channels, total memory across processes (rlimits are per process).

Usage:
    sandbox = Sandbox(workspace, readonly=[repo, public_data], hidden=[repo / ".aar/sealed"])
    result = sandbox.run_python(workspace / "idea.py", ["--seed", "0"])
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .limits import MIB, QUOTA_POLL_SECONDS, SandboxLimits
from .mounts import bwrap_command, is_within
from .process import run_capped

__all__ = [
    "MIB",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "check_available",
    "disk_usage",
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
    stopped_because: str | None = None  # e.g. the workspace quota; then stderr says so too

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


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


def disk_usage(root: Path) -> int:
    """Bytes allocated to the files under `root` (blocks, so sparse files count what they
    hold), symlinks not followed."""
    total, stack = 0, [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # removed or unreadable meanwhile
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
    return total


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
    a GPU; then also set `memory_mb=None`).

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
        quota = None if self.limits.workspace_mb is None else self.limits.workspace_mb * MIB
        used_at_start = 0 if quota is None else disk_usage(self.workspace)
        command = bwrap_command(
            bwrap=find_bwrap(),
            as_root=as_root,
            workspace=self.workspace,
            readonly=self.readonly,
            hidden=self.hidden,
            devices=self.devices,
            limits=self.limits,
            env=self._inside_environment(env),
            launcher_spec=self._launcher_spec(workspace_used_bytes=used_at_start),
            command=argv,
            empty_fd=empty_fd,
        )
        captured = run_capped(
            command,
            stdin=stdin,
            # bwrap itself gets nothing of ours either (--clearenv covers the inside).
            env={"PATH": DEFAULT_PATH},
            wall_seconds=self.limits.wall_seconds,
            max_output_bytes=self.limits.max_output_bytes,
            pass_fds=[empty_fd],
            watchdog=None if quota is None else functools.partial(self._over_quota, used_at_start),
            poll_seconds=QUOTA_POLL_SECONDS,
        )
        stderr = captured.stderr.text()
        if captured.stopped_because:
            stderr += f"\n[sandbox: stopped: {captured.stopped_because}]\n"
        elif quota is not None and used_at_start > quota:
            stderr += (f"\n[sandbox: the workspace is over its quota of {self.limits.workspace_mb} MiB: "
                       "no file can grow until you delete files]\n")
        return SandboxResult(
            returncode=captured.returncode,
            stdout=captured.stdout.text(),
            stderr=stderr,
            timed_out=captured.timed_out,
            truncated=bool(captured.stdout.dropped or captured.stderr.dropped),
            wall_seconds=captured.wall_seconds,
            stopped_because=captured.stopped_because,
        )

    def _over_quota(self, used_at_start: int) -> str | None:
        """Stop a command that takes the workspace over its quota. One that starts over it (to
        read or delete) may go on as long as it does not add to it."""
        used, quota = disk_usage(self.workspace), self.limits.workspace_mb * MIB
        if used <= max(quota, used_at_start):
            return None
        return (f"the workspace holds {used / MIB:.0f} MiB, over its quota of {self.limits.workspace_mb} MiB; "
                "delete files to write again")

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

    def _launcher_spec(self, workspace_used_bytes: int) -> str:
        return json.dumps(
            {
                "uid": SANDBOX_UID,
                "gid": SANDBOX_GID,
                "cwd": str(self.workspace),
                "rlimits": self.limits.rlimits(workspace_used_bytes),
                "cpus": self._pick_cpus(),
            }
        )
