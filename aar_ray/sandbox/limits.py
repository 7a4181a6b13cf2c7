"""Resource limits for one sandboxed command."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
QUOTA_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class SandboxLimits:
    """What one `Sandbox.run` may consume. `None` means "no limit" for the optional ones.

    Memory: `total_memory_mb` caps every process of the sandbox together, including what they
    keep in its private tmpfs mounts (/tmp and /dev/shm live in memory): each run gets its own
    memory cgroup (a child of this process's: cgroup v1's memory controller or cgroup v2), and
    once the kernel has to kill one of its processes to stay under the cap, the whole command is
    stopped and `SandboxResult.stopped_because` says so. That needs a cgroup this process may
    write to (root, or a delegated subtree); where there is none, the cap is not enforced (a log
    line says so, once) and only the per-process rlimits below hold. Those stay in any case:
    `memory_mb` is RLIMIT_AS, address space per process, which the kernel has no per-tree
    version of, so without the cgroup a command that forks can use up to `max_processes` times
    `memory_mb`. Set `memory_mb=None` for CUDA work (the driver reserves far more virtual address
    space than it ever touches, and RLIMIT_AS counts reservations), and raise `total_memory_mb`
    there too: pinned host buffers are real memory. CPU across processes is bounded by `cpus`:
    the sandbox is pinned to that many cores and cannot re-pin itself.

    Workspace quota (`workspace_mb`, `workspace_files`): the workspace is a bind mount of a host
    directory, and per-directory quotas need filesystem support (project quotas) that we cannot
    assume, so it is enforced in three steps: no file may grow past what the byte quota has left
    when a command starts (RLIMIT_FSIZE); a watchdog walks the workspace while the command runs
    and stops it once it is over either quota; and while it is over, commands still run (to
    read and delete) but can grow no file at all and are stopped if they add entries. Bytes are
    counted per file as the larger of its allocated blocks and its apparent size, so sparse
    files count what they claim to hold. The watchdog paces itself to cost the host little (see
    `quota.py`): it looks every `QUOTA_POLL_SECONDS` while the workspace is small and less often
    as it grows, so one command can overshoot by what it writes between two looks, in files
    each no larger than the byte quota's remainder.
    """

    wall_seconds: float = 600.0
    # RLIMIT_CPU, seconds of CPU time per process; the process gets SIGXCPU then SIGKILL.
    cpu_seconds: int | None = None
    # RLIMIT_AS, address space per process.
    memory_mb: int | None = 4096
    # Memory of all the sandbox's processes together, tmpfs contents included (a memory cgroup).
    total_memory_mb: int | None = 4096
    # RLIMIT_NPROC, counted over every task (processes and threads) of the sandbox's user in
    # its own user namespace, i.e. over this sandbox alone.
    max_processes: int | None = 64
    # Per stream (stdout and stderr each); the rest is read and discarded.
    max_output_bytes: int = MIB
    # RLIMIT_FSIZE: no single file may grow past this.
    max_file_mb: int | None = 512
    # Size of each of the private tmpfs mounts (/tmp and /dev/shm); they live in host memory.
    tmp_mb: int = 512
    # Disk the workspace may hold, in MiB (per file, the larger of its blocks and its size).
    workspace_mb: int | None = 2048
    # Entries (files, directories, links) the workspace may hold.
    workspace_files: int | None = 20_000
    # CPU cores every process of the sandbox shares (pinned, and not allowed to re-pin).
    cpus: int | None = None

    def __post_init__(self) -> None:
        if self.wall_seconds <= 0:
            raise ValueError(f"wall_seconds must be positive, got {self.wall_seconds}")
        if self.max_output_bytes < 0:
            raise ValueError(f"max_output_bytes must be >= 0, got {self.max_output_bytes}")
        if self.tmp_mb <= 0:
            raise ValueError(f"tmp_mb must be positive, got {self.tmp_mb}")
        for name in ("cpu_seconds", "memory_mb", "total_memory_mb", "max_processes", "max_file_mb",
                     "workspace_mb", "workspace_files", "cpus"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")

    def rlimits(self, workspace_used_bytes: int = 0, workspace_entries: int = 0) -> dict[str, int | None]:
        """The rlimits the launcher applies inside the sandbox, by `resource` constant name, given
        what the workspace holds when the command starts: no file may grow past the byte quota's
        remainder, and none at all while the workspace is over either quota."""
        file_caps = [self.max_file_mb * MIB if self.max_file_mb is not None else None,
                     max(0, self.workspace_mb * MIB - workspace_used_bytes) if self.workspace_mb is not None else None]
        if self.workspace_files is not None and workspace_entries > self.workspace_files:
            file_caps.append(0)
        file_caps = [cap for cap in file_caps if cap is not None]
        return {
            "RLIMIT_CPU": self.cpu_seconds,
            "RLIMIT_AS": None if self.memory_mb is None else self.memory_mb * MIB,
            "RLIMIT_FSIZE": min(file_caps) if file_caps else None,
            "RLIMIT_NPROC": self.max_processes,
            # Core dumps would write the process's memory into the workspace.
            "RLIMIT_CORE": 0,
        }
