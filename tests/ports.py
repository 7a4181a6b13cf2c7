"""The servers the tests start (MLflow, vLLM, Ray nodes): a free TCP port on loopback, and a wait
for a server to answer."""

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float, probe_timeout: float = 10) -> bool:
    """Whether `url` (a health endpoint) answered OK within `timeout` seconds while `server` ran.
    A refused connection or a slow answer is retried: a busy machine starts a server slowly."""
    import requests

    deadline = time.time() + timeout
    while server.poll() is None and time.time() < deadline:
        try:
            if requests.get(url, timeout=probe_timeout).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False
