"""The README's test command, run several times in a row while busy loops keep every core busy.

Tests that pass on an idle machine and fail on a loaded one (timeouts, ordering, quota bounds
that depend on scheduling) show up here, not in CI. Prints one JSON line: each run's seconds,
passed/failed counts and exit code, the load average seen, and the slowdown against an idle run
when `--idle-baseline` also times one run without the busy loops.

    .venv/bin/python benchmarks/suite_under_load.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The README's test command, tier by tier, so each tier's time is reported.
TIERS = {"fast": ["-m", "not slow"], "slow": ["-m", "slow"]}
SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected)")


def busy_loop() -> None:  # pragma: no cover - runs until terminated
    while True:
        pass


def run_tier(name: str, marker: list[str], log: Path) -> dict:
    """One tier of the suite, its output in `log` (a file, not a pipe: a process a test left
    behind could hold a pipe open long after pytest ended); its seconds, counts and exit code.
    The log ends with the 30 slowest steps, where a bound that a busy machine nears shows first."""
    started = time.monotonic()
    with log.open("w") as out:
        returncode = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "--durations=30", *marker], cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT).returncode
    lines = log.read_text(errors="replace").splitlines()
    summary = next((line for line in reversed(lines) if SUMMARY.search(line) and " in " in line), "")
    counts = {kind.rstrip("s"): int(n) for n, kind in SUMMARY.findall(summary)}
    if returncode != 0:  # the failures' names, so a red run can be read from the JSON alone
        counts["failures"] = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"tier": name, "seconds": round(time.monotonic() - started, 1), "returncode": returncode,
            "log": str(log), **counts}


def run_suite(logs: Path, label: str) -> dict:
    """Both tiers, stopping after a red one as the README's `&&` does."""
    started, tiers = time.monotonic(), []
    for name, marker in TIERS.items():
        tiers.append(run_tier(name, marker, logs / f"{label}-{name}.log"))
        if tiers[-1]["returncode"] != 0:
            break
    return {"seconds": round(time.monotonic() - started, 1),
            "passed": all(t["returncode"] == 0 for t in tiers) and len(tiers) == len(TIERS),
            "tiers": tiers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="full-suite runs in a row under load")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                        help="busy-loop processes (default: one per core)")
    parser.add_argument("--idle-baseline", action="store_true",
                        help="first time one run with no busy loops, for the slowdown ratio")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.mkdtemp(prefix="suite-under-load-")),
                        help="folder for each tier's pytest output (default: a new temporary folder)")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)

    result: dict = {"cores": os.cpu_count(), "busy_loops": args.busy}
    if args.idle_baseline:
        result["idle"] = run_suite(args.logs, "idle")
    loops = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
    for loop in loops:
        loop.start()
    runs, loads = [], []
    try:
        for index in range(args.runs):
            runs.append(run_suite(args.logs, f"run{index + 1}"))
            loads.append(round(os.getloadavg()[0], 1))
            print(f"run {index + 1}/{args.runs}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    finally:
        for loop in loops:
            loop.terminate()
    result.update(runs=runs, load_average_after_each=loads,
                  all_passed=all(run["passed"] for run in runs))
    if args.idle_baseline and runs:
        loaded = sum(run["seconds"] for run in runs) / len(runs)
        result["slowdown_under_load"] = round(loaded / result["idle"]["seconds"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
