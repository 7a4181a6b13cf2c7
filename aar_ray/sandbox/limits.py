"""Resource limits for one sandboxed command."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
QUOTA_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class SandboxLimits:
    """What one `Sandbox.run` may consume. `None` means "no limit" for the optional rlimits.

    The rlimits are per process (the kernel has no per-tree RLIMIT_AS or RLIMIT_CPU), so a
    command that forks can use up to `max_processes` times `memory_mb`; `max_processes` is what
    bounds the total. CPU across processes is bounded by `cpus`: the sandbox is pinned to that
    many cores and cannot re-pin itself. Set `memory_mb=None` for CUDA work: the driver reserves far more virtual
    address space than it ever touches, and RLIMIT_AS counts reservations.

    Workspace quota (`workspace_mb`): the workspace is a bind mount of a host directory, and
    per-directory quotas need filesystem support (project quotas) that we cannot assume, so it
    is enforced in three steps: no file may grow past what the quota has left when a command
    starts (RLIMIT_FSIZE); a watchdog measures the workspace every `QUOTA_POLL_SECONDS` and
    stops the command once it is over; and while it is over, commands still run (to read and
    delete) but can grow no file at all. One command can overshoot by what it writes between
    two polls, in files each no larger than the quota's remainder.
    """

    wall_seconds: float = 600.0
    # RLIMIT_CPU, seconds of CPU time per process; the process gets SIGXCPU then SIGKILL.
    cpu_seconds: int | None = None
    # RLIMIT_AS, address space per process.
    memory_mb: int | None = 4096
    # RLIMIT_NPROC, counted over every task (processes and threads) of the sandbox's user in
    # its own user namespace, i.e. over this sandbox alone.
    max_processes: int | None = 64
    # Per stream (stdout and stderr each); the rest is read and discarded.
    max_output_bytes: int = MIB
    # RLIMIT_FSIZE: no single file may grow past this.
    max_file_mb: int | None = 512
    # Size of each of the private tmpfs mounts (/tmp and /dev/shm); they live in host memory.
    tmp_mb: int = 512
    # Disk the workspace may hold, in MiB (its files' allocated blocks).
    workspace_mb: int | None = 2048
    # CPU cores every process of the sandbox shares (pinned, and not allowed to re-pin).
    cpus: int | None = None

    def __post_init__(self) -> None:
        if self.wall_seconds <= 0:
            raise ValueError(f"wall_seconds must be positive, got {self.wall_seconds}")
        if self.max_output_bytes < 0:
            raise ValueError(f"max_output_bytes must be >= 0, got {self.max_output_bytes}")
        if self.tmp_mb <= 0:
            raise ValueError(f"tmp_mb must be positive, got {self.tmp_mb}")
        for name in ("cpu_seconds", "memory_mb", "max_processes", "max_file_mb", "workspace_mb", "cpus"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")

    def rlimits(self, workspace_used_bytes: int = 0) -> dict[str, int | None]:
        """The rlimits the launcher applies inside the sandbox, by `resource` constant name."""
        file_caps = [self.max_file_mb * MIB if self.max_file_mb is not None else None,
                     max(0, self.workspace_mb * MIB - workspace_used_bytes) if self.workspace_mb is not None else None]
        file_caps = [cap for cap in file_caps if cap is not None]
        return {
            "RLIMIT_CPU": self.cpu_seconds,
            "RLIMIT_AS": None if self.memory_mb is None else self.memory_mb * MIB,
            "RLIMIT_FSIZE": min(file_caps) if file_caps else None,
            "RLIMIT_NPROC": self.max_processes,
            # Core dumps would write the process's memory into the workspace.
            "RLIMIT_CORE": 0,
        }
