"""First process inside the sandbox: become unprivileged, apply limits, exec the command.

Usage (inside bwrap): python -I -S launcher.py SPEC_JSON -- COMMAND [ARGS...]

Why this exists: when the host side runs as root, bwrap runs the sandbox as host uid 0, and the
kernel never applies RLIMIT_NPROC to uid 0, so a fork bomb would be uncapped. Before exec'ing
the command we therefore move into a fresh user namespace in which uid/gid 65534 maps to host
uid/gid 65534, and switch to that user, which clears every capability. The namespace is new for
each run, so the process count RLIMIT_NPROC sees is this sandbox's alone (not every process the
host runs as 65534). When the host side is not root, bwrap already runs us unprivileged and we
only apply the limits.

The limits are set here, after the namespace exists, because a user namespace records its
creator's RLIMIT_NPROC as the ceiling for everything inside it: lowering it earlier would count
all of root's host processes against the sandbox's small limit.

/proc: the mount table (/proc/<pid>/mountinfo, mounts, mountstats) names the host paths the
binds come from (their path inside the source filesystem, its device, its options), which no
mount option hides. So before exec'ing the command we take away the right to read files under
/proc with Landlock, except a few machine-wide ones (cpuinfo, ...), and the seccomp filter
refuses the syscalls that read the mount table directly. Listing /proc and following
/proc/self/fd links (bash's <(...), /dev/fd/N) still work: Landlock judges the file a link
leads to. Where the kernel has no Landlock, the command gets no procfs at all: when we run as
root the launcher still needed it (for the id maps), so it covers it with an empty mount in a
mount namespace of its own, which the command, without capabilities, cannot undo.

Standard library only: this file runs with `python -I -S` and must not import the project.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import resource
import struct
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CAP_LAST_CAP_GUESS = 63

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _write_id_maps_once_unshared(parent_pid: int, ready_fd: int, uid: int, gid: int) -> None:
    """Runs in a helper child that stays in the outer namespace, where it still holds
    CAP_SETUID/CAP_SETGID: a process may only map arbitrary ids into a namespace it is not in."""
    try:
        if not os.read(ready_fd, 1):  # the parent died before unsharing
            os._exit(1)
        with open(f"/proc/{parent_pid}/uid_map", "w") as uid_map:
            uid_map.write(f"{uid} {uid} 1\n")
        with open(f"/proc/{parent_pid}/gid_map", "w") as gid_map:
            gid_map.write(f"{gid} {gid} 1\n")
    except BaseException as error:  # noqa: BLE001 - report anything, then exit without cleanup
        os.write(2, f"sandbox launcher: writing id maps failed: {error}\n".encode())
        os._exit(1)
    os._exit(0)


def become_unprivileged_user(uid: int, gid: int, cover_proc: bool = False) -> None:
    """Enter a new user namespace as `uid`/`gid` with no capabilities and no supplementary groups.
    With `cover_proc`, also a mount namespace of its own in which /proc is an empty mount."""
    ready_read, ready_write = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(ready_write)
        _write_id_maps_once_unshared(os.getppid(), ready_read, uid, gid)
    os.close(ready_read)
    flags = CLONE_NEWUSER | (CLONE_NEWNS if cover_proc else 0)
    _check(_libc.unshare(flags), "unshare(CLONE_NEWUSER)")
    os.write(ready_write, b"1")
    os.close(ready_write)
    _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("could not map the sandbox user into its user namespace")
    if cover_proc:
        # Still all capabilities in the new namespaces, until the uid changes below. Mounts
        # inherited from bwrap's namespace are locked (cannot be unmounted), but can be covered.
        _check(_libc.mount(b"none", b"/proc", b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           b"size=4k,mode=555"), "covering /proc")
    _drop_bounding_set()
    # Groups first: once the uid changes we lose the capability to change them. Root's
    # supplementary groups would otherwise still grant group access to host files.
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # leaving uid 0 clears the permitted and effective capabilities


def _drop_bounding_set() -> None:
    for capability in range(CAP_LAST_CAP_GUESS + 1):
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            break  # EINVAL: past the kernel's last capability


def apply_rlimits(rlimits: dict[str, int | None]) -> None:
    for name, value in rlimits.items():
        if value is None:
            continue
        # Hard limit too, so the command cannot raise it back.
        resource.setrlimit(getattr(resource, name), (value, value))


def pin_to_cpus(cpus: list[int] | None) -> None:
    """Run on these CPUs only. Children inherit it, and the seccomp filter below refuses
    sched_setaffinity, so this caps the CPU of every process in the sandbox together (rlimits
    only cap each process)."""
    if cpus:
        os.sched_setaffinity(0, cpus)


# --- Landlock: no reading of /proc's per-process files --------------------------------------
# Landlock only grants, so the rules grant reading beneath every top-level directory but /proc,
# and a few machine-wide files in it; everything else in /proc (every /proc/<pid>/...) cannot
# be opened for reading. Writing, listing and executing are not restricted here. The syscall
# numbers are the same on every architecture (they were added after the tables were unified).

_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_ACCESS_FS_READ_FILE = 1 << 2
_LANDLOCK_RULE_PATH_BENEATH = 1
# What libraries read about the machine: torch's cpuinfo, os.cpu_count() (via /proc/stat when
# /sys is absent, as here), psutil's memory and load figures, the NVIDIA driver's parameters.
PROC_READABLE = ("cpuinfo", "meminfo", "stat", "loadavg", "uptime", "driver")


def _syscall(*args: int | bytes | None) -> int:
    _libc.syscall.restype = ctypes.c_long
    return _libc.syscall(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where it has none (or it is disabled)."""
    return max(0, _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION))


def _allow_reading(ruleset: int, path: str) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:  # a dangling top-level link, or a /proc file this kernel lacks
        return
    try:
        rule = struct.pack("=Qi", _LANDLOCK_ACCESS_FS_READ_FILE, fd)  # packed landlock_path_beneath_attr
        if _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, rule, 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"landlock_add_rule({path}): {os.strerror(code)}")
    finally:
        os.close(fd)


def hide_proc_files() -> None:
    """From now on, this process and everything it execs can read no file under /proc but
    PROC_READABLE. Needs no_new_privs."""
    handled = struct.pack("=Q", _LANDLOCK_ACCESS_FS_READ_FILE)  # landlock_ruleset_attr, ABI 1 part
    ruleset = _syscall(_SYS_LANDLOCK_CREATE_RULESET, handled, len(handled), 0)
    if ruleset < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"landlock_create_ruleset: {os.strerror(code)}")
    try:
        for name in sorted(os.listdir("/")):
            target = os.path.realpath("/" + name)
            if target != "/proc" and not target.startswith("/proc/"):
                _allow_reading(ruleset, "/" + name)
        for name in PROC_READABLE:
            _allow_reading(ruleset, f"/proc/{name}")
        _check(_syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


# --- seccomp: no new user namespaces, no widening of the CPU set, no mount table ------------
# A user namespace gives its creator every capability inside it, which opens kernel code
# (mounting filesystems, configuring network devices) that unprivileged processes cannot
# otherwise reach and that has been the entry point of many privilege escalations. Nothing an
# experiment does needs one, so unshare/clone with CLONE_NEWUSER fail with EPERM. clone3 passes
# its flags in memory a filter cannot read, so it fails with ENOSYS and glibc falls back to clone.
# sched_setaffinity fails with EPERM, so no process can leave the CPUs it was pinned to.
# listmount/statmount (Linux 6.8+) read the mount table without /proc, host paths included (see
# the module docstring), so they fail with ENOSYS, as on kernels that lack them.

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYSCALL_NUMBERS = {  # (unshare, clone, clone3, sched_setaffinity, statmount, listmount)
    "x86_64": (272, 56, 435, 203, 457, 458),
    "aarch64": (97, 220, 435, 122, 457, 458),
}
_X32_SYSCALL_BIT = 0x40000000  # x86_64's x32 ABI: same arch value, numbers offset by this bit

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data, little endian


def _instruction(code: int, k: int, jump_true: int = 0, jump_false: int = 0) -> bytes:
    return struct.pack("HBBI", code, jump_true, jump_false, k)


def user_namespace_filter(machine: str) -> bytes | None:
    """Classic BPF program for seccomp; None on architectures we have no syscall table for."""
    if machine not in _SYSCALL_NUMBERS:
        return None
    unshare, clone, clone3, sched_setaffinity, statmount, listmount = _SYSCALL_NUMBERS[machine]
    eperm, enosys = _RET_ERRNO | errno.EPERM, _RET_ERRNO | errno.ENOSYS
    program = [
        _instruction(_BPF_LD_W_ABS, _OFFSET_ARCH),                      # 0
        _instruction(_BPF_JEQ_K, _AUDIT_ARCH[machine], 1, 0),           # 1: native ABI -> 3
        _instruction(_BPF_RET_K, eperm),                                # 2: compat ABIs refused
        _instruction(_BPF_LD_W_ABS, _OFFSET_NR),                        # 3
        _instruction(_BPF_JGE_K, _X32_SYSCALL_BIT, 0, 1),               # 4: x32 -> 5, else 6
        _instruction(_BPF_RET_K, eperm),                                # 5
        _instruction(_BPF_JEQ_K, sched_setaffinity, 0, 1),              # 6: -> 7, else 8
        _instruction(_BPF_RET_K, eperm),                                # 7
        _instruction(_BPF_JEQ_K, clone3, 2, 0),                         # 8: clone3 -> 11
        _instruction(_BPF_JEQ_K, statmount, 1, 0),                      # 9: statmount -> 11
        _instruction(_BPF_JEQ_K, listmount, 0, 1),                      # 10: listmount -> 11, else 12
        _instruction(_BPF_RET_K, enosys),                               # 11
        _instruction(_BPF_JEQ_K, unshare, 1, 0),                        # 12: unshare -> 14
        _instruction(_BPF_JEQ_K, clone, 0, 3),                          # 13: clone -> 14, else 17
        _instruction(_BPF_LD_W_ABS, _OFFSET_ARG0),                      # 14: flags (low 32 bits)
        _instruction(_BPF_JSET_K, CLONE_NEWUSER, 0, 1),                 # 15: NEWUSER -> 16
        _instruction(_BPF_RET_K, eperm),                                # 16
        _instruction(_BPF_RET_K, _RET_ALLOW),                           # 17
    ]
    return b"".join(program)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def forbid_new_user_namespaces() -> bool:
    """Install the filter on this process and everything it execs; False if unsupported here."""
    program = user_namespace_filter(platform.machine())
    if program is None:
        return False
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    _check(
        _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
        "prctl(PR_SET_SECCOMP)",
    )
    return True


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        os.write(2, b"usage: launcher.py SPEC_JSON -- COMMAND [ARGS...]\n")
        return 2
    spec = json.loads(argv[0])
    command = argv[2:]
    proc = spec.get("proc")  # "landlock", "cover" (root only) or None: see the module docstring
    if os.getuid() == 0:
        become_unprivileged_user(spec["uid"], spec["gid"], cover_proc=proc == "cover")
    os.chdir(spec["cwd"])
    # Setuid binaries must not regain what we dropped (bwrap sets this too; be explicit).
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if proc == "landlock":
        hide_proc_files()
    pin_to_cpus(spec.get("cpus"))
    forbid_new_user_namespaces()
    apply_rlimits(spec["rlimits"])
    try:
        os.execvp(command[0], command)
    except OSError as error:
        os.write(2, f"sandbox: cannot execute {command[0]!r}: {error.strerror}\n".encode())
        return 127
    return 127  # not reached: execvp only returns by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
