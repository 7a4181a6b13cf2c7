"""The sandbox, tested against real bubblewrap.

Nothing here is skipped when bwrap is missing: every test then fails with SandboxUnavailable's
message, which says which package to install. Commands that would harm the host if a limit
failed are bounded on their own (the fork bomb stops at 200 processes).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from aar_ray.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    check_available,
)

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def require_sandbox() -> None:
    check_available()  # raises (fails the test) with the install hint when bwrap is unusable


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A workspace, a read-only code directory holding secrets to hide, a sealed directory."""
    code = tmp_path / "code"
    (code / ".aar" / "sealed").mkdir(parents=True)
    (code / ".aar" / "sealed" / "labels.jsonl").write_text('{"label": 1}\n')
    (code / "lexicon.py").write_text("SECRET_RULE = 'label is 1 when ...'\n")
    (code / "visible.py").write_text("print('visible code')\n")
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    (sealed / "labels.jsonl").write_text('{"label": 0}\n')
    return {"root": tmp_path, "workspace": tmp_path / "ws", "code": code, "sealed": sealed}


def make_sandbox(layout: dict[str, Path], **limits: object) -> Sandbox:
    code = layout["code"]
    return Sandbox(
        layout["workspace"],
        readonly=[code],
        hidden=[code / ".aar" / "sealed", code / "lexicon.py", layout["sealed"]],
        limits=SandboxLimits(**limits),
    )


def run_code(sandbox: Sandbox, source: str, **kwargs: object):
    return sandbox.run([sys.executable, "-c", textwrap.dedent(source)], **kwargs)


def test_runs_python_script_with_args_and_stdin(layout):
    script = layout["code"] / "echo_args.py"
    script.write_text("import sys\nprint(sys.argv[1:], sys.stdin.read().upper())\n")
    result = make_sandbox(layout).run_python(script, ["--seed", "3"], stdin="hello")
    assert result.ok, result.stderr
    assert result.stdout == "['--seed', '3'] HELLO\n"
    assert not result.timed_out and not result.truncated


def test_workspace_is_writable_and_readonly_paths_are_not(layout):
    code = layout["code"]
    # World-writable on the host, so only the read-only mount can refuse the writes.
    code.chmod(0o777)
    (code / "visible.py").chmod(0o666)
    result = run_code(
        make_sandbox(layout),
        f"""
        import pathlib
        pathlib.Path("result.txt").write_text("written inside")
        for target in ["{code}/visible.py", "{code}/new_file.py"]:
            try:
                open(target, "a").write("tampered")
                print("WROTE", target)
            except OSError as error:
                print("refused", error.strerror)
        """,
    )
    assert result.ok, result.stderr
    assert (layout["workspace"] / "result.txt").read_text() == "written inside"
    assert "WROTE" not in result.stdout
    assert result.stdout.count("refused Read-only file system") == 2
    assert (code / "visible.py").read_text() == "print('visible code')\n"
    assert not (code / "new_file.py").exists()


def test_workspace_inside_a_readonly_repository_stays_writable(layout):
    code = layout["code"]
    workspace = code / ".aar" / "workspaces" / "researcher-1"
    sandbox = Sandbox(workspace, readonly=[code], hidden=[code / ".aar" / "sealed"])
    result = run_code(
        sandbox,
        f"""
        import os
        open("notes.txt", "w").write("mine")
        try:
            open("{code}/.aar/other.txt", "w").write("x")
        except OSError as error:
            print("refused", error.strerror)
        print(os.listdir("{code}/.aar/sealed"))
        """,
    )
    assert result.ok, result.stderr
    assert (workspace / "notes.txt").read_text() == "mine"
    assert result.stdout.splitlines() == ["refused Read-only file system", "[]"]


def test_sealed_directory_outside_the_binds_does_not_exist_inside(layout):
    sealed, root = layout["sealed"], layout["root"]
    result = run_code(
        make_sandbox(layout),
        f"""
        import os
        print(os.path.exists("{sealed}"), os.path.exists("{sealed}/labels.jsonl"))
        print(sorted(os.listdir("{root}")))
        """,
    )
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["False False", "['code', 'ws']"]


def test_hidden_directory_under_a_bound_directory_is_empty(layout):
    hidden = layout["code"] / ".aar" / "sealed"
    result = run_code(
        make_sandbox(layout),
        f"""
        import os
        print(os.listdir("{hidden}"))
        try:
            open("{hidden}/labels.jsonl").read()
            print("READ LABELS")
        except OSError as error:
            print("refused", error.strerror)
        """,
    )
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["[]", "refused No such file or directory"]


def test_hidden_file_reads_empty_while_its_neighbours_stay_readable(layout):
    code = layout["code"]
    result = run_code(
        make_sandbox(layout),
        f"""
        print(repr(open("{code}/lexicon.py").read()))
        print(repr(open("{code}/visible.py").read()))
        try:
            open("{code}/lexicon.py", "w").write("x")
        except OSError as error:
            print("refused", error.strerror)
        """,
    )
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == [
        "''",
        repr("print('visible code')\n"),
        "refused Read-only file system",
    ]


@pytest.fixture
def local_server():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_no_network_to_the_internet_or_host_loopback(layout, local_server):
    # The host itself can reach the server, so a refusal inside is the sandbox's doing.
    socket.create_connection(("127.0.0.1", local_server), timeout=2).close()
    result = run_code(
        make_sandbox(layout),
        f"""
        import socket
        for address in [("1.1.1.1", 53), ("127.0.0.1", {local_server})]:
            try:
                socket.create_connection(address, timeout=3).close()
                print("CONNECTED", address)
            except OSError as error:
                print("blocked", address[0], type(error).__name__)
        """,
    )
    assert result.ok, result.stderr
    assert "CONNECTED" not in result.stdout
    assert result.stdout.count("blocked") == 2


def test_environment_is_whitelisted(layout, monkeypatch):
    secret = f"sk-ant-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    result = run_code(
        make_sandbox(layout),
        """
        import glob, json, os
        every_environ = b""
        for path in glob.glob("/proc/[0-9]*/environ"):
            try:
                every_environ += open(path, "rb").read()
            except PermissionError:
                pass  # bwrap's init (pid 1) stays root-owned; it too got an empty environment
        print(json.dumps(dict(os.environ)))
        print(every_environ.decode(errors="replace"))
        """,
        env={"SEED": "7"},
    )
    assert result.ok, result.stderr
    assert secret not in result.stdout
    inside = json.loads(result.stdout.splitlines()[0])
    assert set(inside) <= {"PATH", "HOME", "LANG", "TMPDIR", "SEED", "PWD"}
    assert inside["SEED"] == "7"
    assert inside["HOME"] == str(layout["workspace"])


def host_processes_with(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass  # exited while we looked
    return found


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition still false after waiting"
        time.sleep(0.02)


def test_wall_timeout_kills_the_command_and_its_children(layout):
    marker = f"{time.time_ns() % 10**6}.5"  # unique `sleep` argument to find stragglers by
    result = run_code(
        make_sandbox(layout, wall_seconds=2),
        f"""
        import subprocess
        subprocess.Popen(["sleep", "{marker}"])
        print("spawned", flush=True)
        while True:
            pass
        """,
    )
    assert result.timed_out
    assert not result.ok
    assert result.stdout == "spawned\n"  # output from before the kill is kept
    assert 2 <= result.wall_seconds < 6
    # The kernel tears the pid namespace down asynchronously; give it a moment.
    wait_for(lambda: host_processes_with(f"sleep\0{marker}") == [])


def test_huge_output_is_truncated_without_buffering_it(layout):
    cap = 64 * 1024
    tracemalloc.start()
    try:
        result = run_code(
            make_sandbox(layout, max_output_bytes=cap),
            """
            import os
            chunk = b"x" * 65536
            for _ in range(800):  # 50 MiB on each stream
                os.write(1, chunk)
                os.write(2, chunk)
            """,
        )
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok, result.stderr[-500:]
    assert result.truncated
    for stream in (result.stdout, result.stderr):
        assert stream.startswith("x" * cap)
        assert len(stream) < cap + 200
        assert f"output truncated, {800 * 65536 - cap} more bytes not shown" in stream
    assert peak_bytes < 8 * MIB


FORK_UP_TO_50 = """
import os, time
made = 0
for _ in range(50):  # bounded, so a broken limit cannot hurt the host
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(10)  # killed with the sandbox when the parent exits
        os._exit(0)
    made += 1
print(made)
"""


def test_fork_bomb_is_capped_by_max_processes(layout):
    capped = run_code(make_sandbox(layout, max_processes=16), FORK_UP_TO_50)
    assert capped.ok, capped.stderr
    assert 1 <= int(capped.stdout) < 16
    # The count is this sandbox's own: other processes of the host do not eat into it.
    roomy = run_code(make_sandbox(layout, max_processes=100), FORK_UP_TO_50)
    assert roomy.ok, roomy.stderr
    assert int(roomy.stdout) == 50


def test_memory_hog_fails(layout):
    result = run_code(
        make_sandbox(layout, memory_mb=256),
        """
        try:
            hog = bytearray(2 * 1024**3)
            print("ALLOCATED", len(hog))
        except MemoryError:
            print("MemoryError")
        """,
    )
    assert result.ok, result.stderr
    assert result.stdout.strip() == "MemoryError"


def test_file_larger_than_max_file_mb_cannot_be_written(layout):
    result = run_code(
        make_sandbox(layout, max_file_mb=1),
        """
        try:
            with open("big.bin", "wb") as big:
                big.write(b"x" * (2 * 1024 * 1024))
            print("WROTE")
        except OSError as error:
            print("refused", error.strerror)
        """,
    )
    assert result.ok, result.stderr
    assert result.stdout.strip() == "refused File too large"
    assert (layout["workspace"] / "big.bin").stat().st_size <= MIB


def test_processes_together_get_no_more_than_the_cpus_they_were_given(layout):
    # Two children spin for 1.5 s each; pinned to one core they share it, so together they get
    # at most ~1.5 s of CPU (less when the machine is busy), where two free cores would give 3 s.
    result = run_code(
        make_sandbox(layout, cpus=1),
        """
        import os, time
        print(len(os.sched_getaffinity(0)))
        try:
            os.sched_setaffinity(0, range(os.cpu_count()))
            print("re-pinned")
        except PermissionError:
            print("re-pin refused")
        for _ in range(2):
            if os.fork() == 0:
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    pass
                os._exit(0)
        os.wait(); os.wait()
        print(os.times().children_user + os.times().children_system)
        """,
    )
    assert result.ok, result.stderr
    cores, repin, cpu_seconds = result.stdout.split("\n")[:3]
    assert (cores, repin) == ("1", "re-pin refused")
    assert float(cpu_seconds) < 1.5 * 1.3


def test_proc_shows_only_the_sandbox_processes(layout):
    marker = f"host-marker-{uuid.uuid4().hex}"
    host_process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", marker]
    )
    try:
        wait_for(lambda: host_processes_with(marker) == [host_process.pid])  # until exec'd
        result = run_code(
            make_sandbox(layout),
            """
            import json, os
            pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
            readable = []
            for pid in pids:
                try:
                    readable.append(open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"))
                except PermissionError:
                    pass  # no per-process file in /proc is readable (see test_sandbox_resources)
            print(json.dumps({"pids": pids, "me": os.getpid(), "readable": readable}))
            """,
        )
    finally:
        host_process.kill()
        host_process.wait()
    assert result.ok, result.stderr
    seen = json.loads(result.stdout)
    assert marker not in result.stdout
    assert len(seen["pids"]) <= 3  # bwrap's init, and this python (plus maybe a shell)
    assert seen["me"] in seen["pids"] and seen["readable"] == []


def test_command_runs_unprivileged_and_cannot_create_namespaces(layout):
    result = run_code(
        make_sandbox(layout),
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        # /proc/self/status is not readable inside, so ask the kernel directly.
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # capability API v3, this process
        caps = (ctypes.c_uint32 * 6)()  # {effective, permitted, inheritable} x 2 words
        libc.capget(header, caps)
        print(os.getuid(), hex(caps[0] | caps[3] << 32), libc.prctl(39, 0, 0, 0, 0))  # PR_GET_NO_NEW_PRIVS
        print(libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))  # CLONE_NEWUSER
        try:
            os.setuid(0)
            print("BECAME ROOT")
        except OSError:  # EINVAL: uid 0 does not even exist in the sandbox's user namespace
            print("setuid refused")
        """,
    )
    assert result.ok, result.stderr
    uid_line, unshare_line, setuid_line = result.stdout.splitlines()
    uid, capabilities, no_new_privs = uid_line.split()
    assert uid != "0"
    assert int(capabilities, 16) == 0
    assert no_new_privs == "1"
    assert unshare_line == "-1 Operation not permitted"
    assert setuid_line == "setuid refused"


MISSING_BWRAP = """
import sys
from pathlib import Path
from aar_ray.sandbox import Sandbox, SandboxUnavailable, check_available
for attempt in (check_available, lambda: Sandbox(Path(sys.argv[1])).run(["true"])):
    try:
        attempt()
    except SandboxUnavailable as err:
        print(err)
"""


def test_missing_bwrap_is_a_clear_error_naming_the_package(tmp_path):
    # A fresh interpreter whose PATH has no bwrap, as on a machine without the package.
    proc = subprocess.run([sys.executable, "-c", MISSING_BWRAP, str(tmp_path)], env={"PATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("apt-get install -y bubblewrap") == 2


def test_limits_are_validated():
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=-1)
