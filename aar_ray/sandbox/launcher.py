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


def become_unprivileged_user(uid: int, gid: int) -> None:
    """Enter a new user namespace as `uid`/`gid` with no capabilities and no supplementary groups."""
    ready_read, ready_write = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(ready_write)
        _write_id_maps_once_unshared(os.getppid(), ready_read, uid, gid)
    os.close(ready_read)
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    os.write(ready_write, b"1")
    os.close(ready_write)
    _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("could not map the sandbox user into its user namespace")
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


# --- seccomp: no new user namespaces, no widening of the CPU set ----------------------------
# A user namespace gives its creator every capability inside it, which opens kernel code
# (mounting filesystems, configuring network devices) that unprivileged processes cannot
# otherwise reach and that has been the entry point of many privilege escalations. Nothing an
# experiment does needs one, so unshare/clone with CLONE_NEWUSER fail with EPERM. clone3 passes
# its flags in memory a filter cannot read, so it fails with ENOSYS and glibc falls back to clone.
# sched_setaffinity fails with EPERM, so no process can leave the CPUs it was pinned to.

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYSCALL_NUMBERS = {  # (unshare, clone, clone3, sched_setaffinity)
    "x86_64": (272, 56, 435, 203),
    "aarch64": (97, 220, 435, 122),
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
    unshare, clone, clone3, sched_setaffinity = _SYSCALL_NUMBERS[machine]
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
        _instruction(_BPF_JEQ_K, clone3, 0, 1),                         # 8: clone3 -> 9, else 10
        _instruction(_BPF_RET_K, enosys),                               # 9
        _instruction(_BPF_JEQ_K, unshare, 1, 0),                        # 10: unshare -> 12
        _instruction(_BPF_JEQ_K, clone, 0, 3),                          # 11: clone -> 12, else 15
        _instruction(_BPF_LD_W_ABS, _OFFSET_ARG0),                      # 12: flags (low 32 bits)
        _instruction(_BPF_JSET_K, CLONE_NEWUSER, 0, 1),                 # 13: NEWUSER -> 14
        _instruction(_BPF_RET_K, eperm),                                # 14
        _instruction(_BPF_RET_K, _RET_ALLOW),                           # 15
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
    if os.getuid() == 0:
        become_unprivileged_user(spec["uid"], spec["gid"])
    os.chdir(spec["cwd"])
    # Setuid binaries must not regain what we dropped (bwrap sets this too; be explicit).
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
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
