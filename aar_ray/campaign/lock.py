"""One driver per campaign: a lock file in the campaign's folder of the aar home.

The home is the same path on every node (a local disk on one machine, a shared mount on a
cluster), so one file guards a campaign on a laptop and across a cluster alike, and it is taken
before any set-up (testbeds, embeddings, Ray), so a second driver is refused within a second.

`lock.json` holds the holder's owner token, pid, host, pid namespace and a heartbeat that a
thread of the holder rewrites every `HEARTBEAT_S`. Another driver treats the holder as alive
while the heartbeat is younger than `STALE_S` and, when both run in the same pid namespace
(the same machine or container), its pid still exists. So a driver killed with SIGKILL frees its
campaign at once for `--resume` on the same machine, and after `STALE_S` from anywhere else.
A stale lock is replaced under a short-lived mutex file, so two resumes cannot both take it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from aar_ray.campaign.paths import LOCK_FILE, CampaignPaths
from aar_ray.resources import pid_alive

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_S = 60.0  # a heartbeat this old means the holder is gone (6 missed beats)
MUTEX_STALE_S = 30.0  # a takeover takes milliseconds; a mutex this old was left by a crash


class CampaignRunning(RuntimeError):
    """Another driver holds the campaign."""


def _pid_namespace() -> str | None:
    """Boot id and pid-namespace inode: two processes that share them see each other's pids."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


class CampaignLock:
    def __init__(self, campaign_path: Path | CampaignPaths, campaign: str):
        """`campaign_path`: the campaign's folder, or its CampaignPaths."""
        self.path = campaign_path.lock if isinstance(campaign_path, CampaignPaths) else Path(campaign_path) / LOCK_FILE
        self.campaign = campaign
        self.owner = uuid.uuid4().hex
        self.record = {"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                       "pidns": _pid_namespace(), "started": time.time(), "heartbeat": time.time()}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ taking and giving back

    def acquire(self) -> "CampaignLock":
        """Take the lock or raise CampaignRunning naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            if self._create():
                return self._started()
            holder = self._read()
            if holder is None:  # given back between our two steps: try again
                time.sleep(0.05)
                continue
            if self.alive(holder):
                raise CampaignRunning(self._refusal(holder))
            with self._mutex():
                if (self._read() or {}).get("owner") == holder["owner"]:  # still the stale one
                    log.warning("campaign %s: taking over the lock of a driver that is gone (pid %s on %s)",
                                self.campaign, holder.get("pid"), holder.get("host"))
                    self._replace()
                    return self._started()
        raise CampaignRunning(f"campaign {self.campaign!r}: could not take {self.path}; try again")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (and the campaign's folder,
        if the lock was all it held: a campaign that never started leaves nothing behind)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if (self._read() or {}).get("owner") == self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()

    def __enter__(self) -> "CampaignLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ who holds it

    def alive(self, holder: dict) -> bool:
        if time.time() - holder.get("heartbeat", 0) >= STALE_S:
            return False
        if holder.get("pidns") and holder["pidns"] == self.record["pidns"]:
            return pid_alive(int(holder["pid"]))  # a killed driver not yet reaped: dead
        return True

    def _refusal(self, holder: dict) -> str:
        age = time.time() - holder.get("heartbeat", 0)
        return (f"campaign {self.campaign!r} is running (driver pid {holder.get('pid')} on "
                f"{holder.get('host')}, heartbeat {age:.0f} s ago): wait for it, or stop it with "
                f"`aar campaign stop --name {self.campaign}`, then `--resume`. A driver that was "
                f"killed frees it at once on its own machine, and after {STALE_S:.0f} s elsewhere.")

    # ------------------------------------------------------------------ the file

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _staged(self) -> Path:
        """The record written in full to a file of its own, ready to be linked or renamed."""
        self.record["heartbeat"] = time.time()
        staged = self.path.with_name(f".lock-{self.owner}-{uuid.uuid4().hex[:6]}")
        staged.write_text(json.dumps(self.record))
        return staged

    def _create(self) -> bool:
        """Create lock.json only if there is none: link() fails if the name exists, also on
        NFS, and the file appears with its whole content."""
        staged = self._staged()
        try:
            os.link(staged, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            staged.unlink()

    def _replace(self) -> None:
        os.replace(self._staged(), self.path)

    @contextlib.contextmanager
    def _mutex(self):
        mutex = self.path.with_name("lock.json.takeover")
        deadline = time.time() + 2 * MUTEX_STALE_S
        while True:
            try:
                os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - mutex.stat().st_mtime > MUTEX_STALE_S or time.time() > deadline:
                        mutex.unlink()
                time.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                mutex.unlink()

    # ------------------------------------------------------------------ heartbeat

    def _started(self) -> "CampaignLock":
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.campaign}", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if (self._read() or {}).get("owner") != self.owner:
                log.error("campaign %s: lost its lock to another driver", self.campaign)
                return
            try:
                self._replace()
            except OSError as err:  # the shared storage hiccuped: try at the next beat
                log.warning("campaign %s: heartbeat not written: %s", self.campaign, err)
