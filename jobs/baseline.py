"""A baseline sweep as a Ray job; from the checkout, on a head started from the project's venv:

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 \
        --runtime-env jobs/runtime_env.yaml -- python jobs/baseline.py --seeds 1-5

The same code path and options as `aar baseline`. Inside a job RAY_ADDRESS points at the
cluster, and the working directory is Ray's temporary copy of the checkout, so results go to
the aar home (--home, else $AAR_HOME on the node, else ~/.aar) and its MLflow store, where
`aar leaderboard` finds them from any directory.
"""

import sys

try:
    from aar_ray.cli import main
except ImportError as err:  # the head was started from a Python without the project
    sys.exit(f"jobs/baseline.py: {err}. This job's `python` ({sys.executable}) is the one on PATH "
             "when `ray start` ran: start the head with the project's venv active "
             "(source .venv/bin/activate; ray start --head ...), see the README")

if __name__ == "__main__":
    sys.exit(main(["baseline", *sys.argv[1:]]))
