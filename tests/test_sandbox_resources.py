"""The sandbox's resource limits and what /proc gives away, attacked as hostile code would.

Against real bubblewrap, and a real memory cgroup where this process may create one (as root
with cgroupfs writable: here and in CI); the memory tests are skipped only where it may not.
Every attack is bounded on its own (so many files, so many MiB), so that a broken limit cannot
hurt the host.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aar_ray.sandbox as sandbox_module
from aar_ray.sandbox import Sandbox, SandboxLimits, check_available, cgroup, disk_usage, workspace_usage
from aar_ray.sandbox.cgroup import NAME_PREFIX, memory_parent
from aar_ray.sandbox.quota import next_poll

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def require_sandbox() -> None:
    check_available()


def make_sandbox(tmp_path: Path, **limits: object) -> Sandbox:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    return Sandbox(tmp_path / "ws", readonly=[code], limits=SandboxLimits(**limits))


def run_code(sandbox: Sandbox, source: str):
    return sandbox.run([sys.executable, "-c", textwrap.dedent(source)])


def entries(directory: Path) -> int:
    return sum(1 for _ in directory.iterdir())


# --- workspace: entries and apparent size -----------------------------------------------------

def test_empty_files_past_the_entry_quota_stop_the_command(tmp_path):
    result = run_code(
        make_sandbox(tmp_path, workspace_files=2000, wall_seconds=60),
        """
        for i in range(50_000):  # empty files: RLIMIT_FSIZE and the byte quota never see them
            open(f"f{i}", "w").close()
        print("made them all")
        """,
    )
    assert result.returncode != 0 and not result.ok
    assert "workspace_files" in result.stopped_because and "workspace_files" in result.stderr
    assert "made them all" not in result.stdout
    assert 2000 < entries(tmp_path / "ws") < 50_000  # overshoot: what it made between two looks


def test_over_the_entry_quota_the_workspace_is_read_and_delete_only(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    for i in range(30):
        (workspace / f"f{i}").write_text(f"file {i}\n")
    sandbox = make_sandbox(tmp_path, workspace_files=20)
    reading = run_code(
        sandbox,
        """
        print(open("f0").read().strip())
        try:
            with open("f0", "a") as grown:
                grown.write("more")
            print("GREW")
        except OSError as error:
            print("refused", error.strerror)
        """,
    )
    assert reading.ok, reading.stderr
    assert reading.stdout.splitlines() == ["file 0", "refused File too large"]
    assert "over its quota of 20" in reading.stderr
    adding = run_code(
        sandbox,
        """
        import time
        for i in range(50):
            open(f"new{i}", "w").close()
        time.sleep(10)  # stopped long before this ends
        """,
    )
    assert adding.returncode != 0 and "already over its quota of 20" in adding.stopped_because
    assert adding.wall_seconds < 5
    deleting = run_code(sandbox, "import glob, os\nfor path in glob.glob('*'): os.remove(path)")
    assert deleting.ok, deleting.stderr
    assert entries(workspace) == 0
    writing = run_code(sandbox, "open('notes.txt', 'w').write('back to normal')")
    assert writing.ok and "quota" not in writing.stderr
    assert (workspace / "notes.txt").read_text() == "back to normal"


def test_sparse_files_count_their_apparent_size(tmp_path):
    result = run_code(
        make_sandbox(tmp_path, workspace_mb=64, max_file_mb=None),
        """
        import time
        for i in range(100):  # 6000 MiB that occupy no blocks
            with open(f"sparse{i}", "wb") as sparse:
                sparse.truncate(60 << 20)
            time.sleep(0.05)
        print("all written")
        """,
    )
    assert result.returncode != 0
    assert "over its quota of 64 MiB" in result.stopped_because
    assert "all written" not in result.stdout
    assert entries(tmp_path / "ws") < 100


def test_usage_counts_apparent_size_hard_links_once_and_every_entry(tmp_path):
    (tmp_path / "sub").mkdir()
    with open(tmp_path / "sub" / "sparse", "wb") as sparse:
        sparse.truncate(1 << 30)
    (tmp_path / "data").write_bytes(b"x" * MIB)
    os.link(tmp_path / "data", tmp_path / "data-link")
    usage = workspace_usage(tmp_path)
    assert usage.entries == 4  # sub, sub/sparse, data, data-link
    assert (1 << 30) + MIB <= usage.bytes < (1 << 30) + 2 * MIB + 64 * 1024
    assert disk_usage(tmp_path) == usage.bytes
    assert workspace_usage(tmp_path, sizes=False).entries == 4


# --- memory across the sandbox's processes ----------------------------------------------------

def cgroups_writable() -> bool:
    parent = memory_parent()
    return not isinstance(parent, str) and os.access(parent[0], os.W_OK)


requires_cgroup = pytest.mark.skipif(
    not cgroups_writable(), reason="this process may not create memory cgroups (not root?)"
)

FOUR_CHILDREN_OF_300_MIB = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        hog = bytearray(300 << 20)
        for i in range(0, len(hog), 4096):  # touch every page: resident, not just reserved
            hog[i] = 1
        time.sleep(2)
        os._exit(0)
    children.append(pid)
print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children])
"""


@requires_cgroup
def test_memory_of_all_processes_together_is_capped(tmp_path):
    # Each child is far under the per-process RLIMIT_AS (memory_mb, 4096): only a cap on the
    # whole tree can stop them. With room for all four, they all finish.
    roomy = run_code(make_sandbox(tmp_path, total_memory_mb=2048), FOUR_CHILDREN_OF_300_MIB)
    assert roomy.ok, roomy.stderr
    assert roomy.stdout.strip() == "[0, 0, 0, 0]"
    capped = run_code(make_sandbox(tmp_path, total_memory_mb=512), FOUR_CHILDREN_OF_300_MIB)
    assert capped.returncode != 0 and not capped.ok
    assert "memory cap of 512 MiB" in capped.stopped_because
    assert "memory cap of 512 MiB" in capped.stderr
    assert capped.stdout.strip() != "[0, 0, 0, 0]"


@requires_cgroup
@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm"])
def test_files_in_tmpfs_count_against_the_memory_cap(tmp_path, directory):
    result = run_code(
        make_sandbox(tmp_path, total_memory_mb=512, tmp_mb=1024),  # the tmpfs itself would take it
        f"""
        for i in range(2):  # 2 x 300 MiB: each file is under max_file_mb
            with open("{directory}/fill%d" % i, "wb") as fill:
                fill.write(bytes(300 << 20))
        print("wrote 600 MiB")
        """,
    )
    assert result.returncode != 0
    assert "memory cap of 512 MiB" in result.stopped_because
    assert "wrote 600 MiB" not in result.stdout


def sandbox_cgroups() -> set[str]:
    """This process's run cgroups (other processes may be running sandboxes meanwhile)."""
    mine = f"{NAME_PREFIX}{os.getpid()}-"
    return {child.name for child in memory_parent()[0].iterdir() if child.name.startswith(mine)}


@requires_cgroup
def test_each_run_gets_its_own_cgroup_and_it_is_removed_afterwards(tmp_path):
    before = sandbox_cgroups()
    inside = run_code(make_sandbox(tmp_path), "print(open('/proc/self/cgroup').read())")
    # /proc/self/cgroup is not readable inside; the cgroup shows from outside only.
    assert "Permission denied" in inside.stderr
    hold = make_sandbox(tmp_path, total_memory_mb=256, wall_seconds=2)
    timed_out = hold.run(["sleep", "30"])
    assert timed_out.timed_out
    oom = run_code(make_sandbox(tmp_path, total_memory_mb=256), FOUR_CHILDREN_OF_300_MIB)
    assert oom.stopped_because
    assert sandbox_cgroups() == before


def test_without_a_writable_cgroup_only_the_rlimits_hold_and_a_log_says_so(tmp_path, monkeypatch, caplog):
    # a reason of its own, so that no earlier fallback in this process has said it already
    monkeypatch.setattr(cgroup, "memory_parent", lambda: f"no cgroup for this test ({tmp_path.name})")
    sandbox = make_sandbox(tmp_path, total_memory_mb=256)
    with caplog.at_level(logging.WARNING, logger=cgroup.__name__):
        first = run_code(sandbox, "print('ran')")
        second = run_code(sandbox, "print('ran')")
    assert first.ok and second.ok and first.stdout == "ran\n"
    warnings = [record.getMessage() for record in caplog.records if record.name == cgroup.__name__]
    assert len(warnings) == 1 and "total_memory_mb is not enforced" in warnings[0]


# --- /proc and the mount table ----------------------------------------------------------------

READ_MOUNT_TABLE = """
import ctypes, json, os, struct, subprocess
child = subprocess.Popen(["sleep", "5"])
paths = [f"/proc/{pid}/{name}" for pid in ("self", "thread-self", "1", str(child.pid))
         for name in ("mountinfo", "mounts", "mountstats", "status", "cmdline", "environ", "maps")]
paths += ["/proc/mounts", "/proc/self/root/proc/self/mountinfo", "/proc/self/root/proc/1/mountinfo"]
outcome = {}
for path in paths:
    try:
        outcome[path] = open(path, "rb").read().decode(errors="replace")
    except OSError as error:
        outcome[path] = error.strerror
proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)  # relative to a /proc fd: the same rule
try:
    outcome["openat"] = os.read(os.open("self/mountinfo", os.O_RDONLY, dir_fd=proc), 100).decode()
except OSError as error:
    outcome["openat"] = error.strerror
# Linux 6.8+ reads the mount table without /proc: listmount, then statmount for each mount's
# root (its path in the source filesystem), mount point and source.
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ids = (ctypes.c_uint64 * 256)()
listed = libc.syscall(458, struct.pack("=IIQQ", 24, 0, 2**64 - 1, 0), ids, 256, 0)
outcome["listmount"] = os.strerror(ctypes.get_errno()) if listed < 0 else ""
for mount_id in ids[:max(listed, 0)]:
    buffer = ctypes.create_string_buffer(1 << 16)
    if libc.syscall(457, struct.pack("=IIQQ", 24, 0, mount_id, 0x3f8), buffer, 1 << 16, 0) == 0:
        outcome["listmount"] += buffer.raw.replace(b"\\0", b" ").decode(errors="replace")
child.kill()
print(json.dumps(outcome))
"""


def test_no_file_in_proc_and_no_syscall_names_the_host_paths_of_the_mounts(tmp_path):
    result = run_code(make_sandbox(tmp_path), READ_MOUNT_TABLE)
    assert result.ok, result.stderr
    outcome = json.loads(result.stdout)
    refused = {"Permission denied", "No such file or directory"}  # thread-self has no mountstats
    assert {path: text for path, text in outcome.items() if text not in refused | {"Function not implemented"}} == {}
    assert outcome["/proc/self/mountinfo"] == outcome["/proc/1/mounts"] == "Permission denied"
    assert outcome["listmount"] == "Function not implemented"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind-mount on the host side")
def test_the_source_of_a_bind_stays_hidden(tmp_path):
    # The workspace is a bind of a directory whose host path the sandbox must not learn: on the
    # host side the mount table names it (as `root` of the mount), inside nothing may.
    source = tmp_path / "secret-source-4f1d"
    (source / "ws").mkdir(parents=True)
    workspace = tmp_path / "given" / "ws"
    workspace.mkdir(parents=True)
    script = f"""
import subprocess, sys
subprocess.run(["mount", "--bind", "{source / 'ws'}", "{workspace}"], check=True)
print("HOST:", "secret-source-4f1d" in open("/proc/self/mountinfo").read())
from aar_ray.sandbox import Sandbox
result = Sandbox(sys.argv[1]).run([sys.executable, "-c", sys.argv[2]])
print("INSIDE:", result.stdout, result.stderr)
"""
    # A private mount namespace: the bind is gone when this process is.
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script, str(workspace),
         READ_MOUNT_TABLE],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    host, inside = done.stdout.split("INSIDE:", 1)
    assert "HOST: True" in host
    assert "secret-source-4f1d" not in inside
    assert "Permission denied" in inside and "Function not implemented" in inside


def test_scientific_python_still_works_with_proc_files_unreadable(tmp_path):
    result = run_code(
        make_sandbox(tmp_path, wall_seconds=300),
        """
        import multiprocessing, os, subprocess
        import numpy, pandas, pyarrow, pyarrow.parquet, sklearn.linear_model, torch
        x = torch.randn(256, 8)
        y = (x[:, 0] > 0).long()
        model = torch.nn.Linear(8, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(50):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        frame = pandas.DataFrame({"a": numpy.arange(5)})
        pyarrow.parquet.write_table(pyarrow.Table.from_pandas(frame), "t.parquet")
        fit = sklearn.linear_model.LogisticRegression().fit(x.numpy(), y.numpy())
        with multiprocessing.get_context("fork").Pool(2) as pool:
            squares = pool.map(abs, [-1, -2])
        print(os.cpu_count() >= 1, float(loss) < 0.5, pandas.read_parquet("t.parquet").a.sum(),
              fit.score(x.numpy(), y.numpy()) > 0.9, squares)
        print(subprocess.run(["echo", "child"], capture_output=True, text=True).stdout.strip())
        print(open("/proc/cpuinfo").read().startswith("processor"), len(os.listdir("/proc/self/fd")) > 2)
        """,
    )
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["True True 10 True [1, 2]", "child", "True True"]
    assert "cpuinfo" not in result.stderr  # torch's CPU probe found what it reads


def test_without_landlock_the_command_gets_no_proc(tmp_path, monkeypatch):
    as_root = os.geteuid() == 0
    monkeypatch.setattr(sandbox_module, "proc_guard", lambda root: "cover" if root else None)
    result = run_code(
        make_sandbox(tmp_path),
        """
        import os, torch
        print(os.listdir("/proc"), os.path.exists("/proc/self/mountinfo"), torch.ones(2).sum().item())
        """,
    )
    assert result.ok, result.stderr
    assert result.stdout.strip() == "[] False 2.0", as_root


def test_new_limits_are_validated():
    with pytest.raises(ValueError, match="workspace_files"):
        SandboxLimits(workspace_files=0)
    with pytest.raises(ValueError, match="total_memory_mb"):
        SandboxLimits(total_memory_mb=-1)
    assert SandboxLimits(workspace_files=None, total_memory_mb=None).rlimits()["RLIMIT_FSIZE"] == 512 * MIB
    assert SandboxLimits(workspace_files=10).rlimits(0, workspace_entries=11)["RLIMIT_FSIZE"] == 0


def test_the_quota_watchdog_looks_less_often_as_walks_get_dearer():
    # A walk may take at most SCAN_SHARE of a core: 1 ms -> every 0.1 s (the floor), 10 ms ->
    # every 0.5 s, and never less often than every 2 s.
    assert next_poll(0.001) == 0.1 and next_poll(0.01) == pytest.approx(0.5) and next_poll(1.0) == 2.0


@pytest.mark.parametrize("version", [1, 2])
def test_the_memory_cgroup_is_found_under_the_mount_that_shows_it(tmp_path, version):
    # As in a container: the hierarchy is mounted from the container's own cgroup down.
    (tmp_path / "sub" / "leaf").mkdir(parents=True)
    fstype, controller = ("cgroup", "memory") if version == 1 else ("cgroup2", "")
    options = frozenset({"rw", "memory"} if version == 1 else {"rw"})
    own = {controller: "/docker/abc/sub/leaf", "pids": "/"}
    mounts = [cgroup.Mount("cgroup", "/", "/elsewhere", frozenset({"rw", "pids"})),
              cgroup.Mount(fstype, "/docker/abc", str(tmp_path), options)]
    assert cgroup.find_memory_cgroup(own, mounts) == (tmp_path / "sub" / "leaf", version)
    assert cgroup.find_memory_cgroup(own, mounts[:1]).startswith("no memory cgroup" if version == 2 else "this process's")
