"""The bwrap command line: which host paths exist inside the sandbox, and how.

Inside, the root is an empty tmpfs; only what is listed here is mounted into it, at the same
path as on the host. Order matters to bwrap (each option acts on the tree built so far), so:
system directories, private scratch mounts, parent directories, the caller's binds from
shallowest to deepest (a writable workspace under a read-only repository stays writable), and
last the masks over hidden paths (so no later bind can uncover them).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .limits import MIB, SandboxLimits

# Top-level system directories; on merged-/usr systems most are symlinks into /usr and are
# recreated as symlinks, so the sandbox sees the same layout as the host.
SYSTEM_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# The few /etc entries programs need: the dynamic linker's cache, user/group names (so `id`
# and getpass work), time zone, `localhost`, and Debian's alternatives symlinks. Secrets in
# /etc (shadow, ssh keys, credentials of services) are simply not mounted.
ETC_ENTRIES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "alternatives",
)

LAUNCHER_INSIDE = "/run/sandbox/launcher.py"

# Namespaces. As root, bwrap mounts with its real privileges and must not create a user
# namespace itself: the launcher creates one whose uid maps to an unprivileged host uid, which
# is only possible from the initial namespace. Unprivileged, bwrap needs the user namespace to
# do anything at all, and can then forbid nested ones itself.
ROOT_NAMESPACE_OPTIONS = (
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    # Keep only what the launcher needs to set up the user namespace; it drops these too.
    "--cap-drop", "ALL",
    "--cap-add", "CAP_SETUID",
    "--cap-add", "CAP_SETGID",
)
UNPRIVILEGED_NAMESPACE_OPTIONS = ("--unshare-all", "--unshare-user", "--disable-userns")


@dataclass(frozen=True)
class Bind:
    path: Path
    writable: bool


def python_runtime_paths() -> list[Path]:
    """Directories the current interpreter needs: the venv and the installation it points to."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    candidates.add(str(Path(sys.executable).resolve().parent))
    return sorted(Path(path).resolve() for path in candidates)


def is_within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def drop_covered(paths: Iterable[Path], covering: Iterable[Path]) -> list[Path]:
    """Paths not already inside one of `covering` or of each other (shallowest kept)."""
    kept: list[Path] = []
    covering = list(covering)
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(is_within(path, other) for other in [*covering, *kept]):
            kept.append(path)
    return kept


def system_mount_options() -> list[str]:
    options: list[str] = []
    for directory in SYSTEM_DIRECTORIES:
        if os.path.islink(directory):
            options += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            options += ["--ro-bind", directory, directory]
    options += ["--perms", "0755", "--dir", "/etc"]  # bwrap would make it 0700
    for entry in ETC_ENTRIES:
        path = f"/etc/{entry}"
        options += ["--ro-bind-try", path, path]
    return options


def scratch_mount_options(limits: SandboxLimits, devices: Sequence[Path], mount_proc: bool = True) -> list[str]:
    """Fresh /proc (this pid namespace only; the launcher keeps its per-process files unreadable,
    or there is none), a minimal /dev, and private size-capped tmpfs."""
    size = str(limits.tmp_mb * MIB)
    options = ["--proc", "/proc"] if mount_proc else ["--perms", "0555", "--dir", "/proc"]
    options += ["--dev", "/dev"]
    # World-writable with the sticky bit, like a normal /tmp: the sandbox user is not root.
    options += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    options += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    for device in devices:
        options += ["--dev-bind-try", str(device), str(device)]
    return options


def parent_directory_options(destinations: Iterable[Path]) -> list[str]:
    """Create every parent of a bind target as 0755 first: bwrap would create missing ones as
    0700 root-owned directories, which the unprivileged sandbox user could not traverse."""
    parents = {parent for path in destinations for parent in path.parents if parent != Path("/")}
    options: list[str] = []
    for parent in sorted(parents, key=lambda p: len(p.parts)):
        options += ["--perms", "0755", "--dir", str(parent)]
    return options


def bind_options(binds: Iterable[Bind]) -> list[str]:
    options: list[str] = []
    # Shallowest first, so a deeper bind (e.g. the workspace inside a read-only repository)
    # is mounted on top of its parent's and keeps its own mode.
    for bind in sorted(binds, key=lambda b: len(b.path.parts)):
        options += ["--bind" if bind.writable else "--ro-bind", str(bind.path), str(bind.path)]
    return options


def mask_options(hidden: Iterable[Path], bound: Sequence[Path], empty_fd: int) -> list[str]:
    """Cover hidden paths that would otherwise be visible through a bind.

    A directory gets an empty read-only tmpfs over it, a file an empty read-only file (the
    contents of `empty_fd`, an fd at end of file). Binding /dev/null itself would not do: bind
    mounts are nodev, so it could not even be opened. Paths outside every bind need nothing:
    they do not exist inside the sandbox at all.
    """
    options: list[str] = []
    # A path inside an already hidden directory is gone with it (and has nowhere to be bound).
    for path in drop_covered(hidden, []):
        if not path.exists() or not any(is_within(path, root) for root in bound):
            continue
        if path.is_dir():
            options += ["--tmpfs", str(path), "--remount-ro", str(path)]
        else:
            options += ["--perms", "0444", "--ro-bind-data", str(empty_fd), str(path)]
    return options


def environment_options(env: Mapping[str, str]) -> list[str]:
    options = ["--clearenv"]
    for name, value in sorted(env.items()):
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"invalid environment variable {name!r}")
        options += ["--setenv", name, value]
    return options


def bwrap_command(
    *,
    bwrap: str,
    as_root: bool,
    workspace: Path,
    readonly: Sequence[Path],
    hidden: Sequence[Path],
    devices: Sequence[Path],
    limits: SandboxLimits,
    env: Mapping[str, str],
    launcher_spec: str,
    command: Sequence[str],
    empty_fd: int,
    mount_proc: bool = True,
) -> list[str]:
    """The full argv: bwrap options, then the launcher, then the caller's command.

    `empty_fd` must be passed to bwrap and read as empty (e.g. open on /dev/null).
    """
    system_roots = [Path(d).resolve() for d in SYSTEM_DIRECTORIES if os.path.isdir(d)]
    read_only_roots = drop_covered([*python_runtime_paths(), *readonly], system_roots)
    binds = [Bind(path, writable=False) for path in read_only_roots]
    binds.append(Bind(workspace, writable=True))
    launcher_source = Path(__file__).with_name("launcher.py")
    destinations = [bind.path for bind in binds] + [Path(LAUNCHER_INSIDE)]

    options = [bwrap, *(ROOT_NAMESPACE_OPTIONS if as_root else UNPRIVILEGED_NAMESPACE_OPTIONS)]
    # Kill the sandbox if we die; own session so it cannot inject input into our terminal.
    options += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    options += system_mount_options()
    options += scratch_mount_options(limits, devices, mount_proc)
    options += parent_directory_options(destinations)
    options += bind_options(binds)
    options += ["--ro-bind", str(launcher_source), LAUNCHER_INSIDE]
    options += mask_options(hidden, [*system_roots, *(bind.path for bind in binds)], empty_fd)
    options += environment_options(env)
    # No --chdir: bwrap would enter the workspace as root without CAP_DAC_OVERRIDE, which a
    # workspace private to the sandbox user refuses; the launcher enters it after switching.
    options += ["--"]
    # -I -S: the launcher must not pick up PYTHON* variables or site-packages code.
    options += [sys.executable, "-I", "-S", LAUNCHER_INSIDE, launcher_spec, "--", *command]
    return options
