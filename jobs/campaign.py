"""A campaign as a Ray job; from the checkout, on a head started from the project's venv:

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 \
        --runtime-env jobs/runtime_env.yaml -- python jobs/campaign.py --config conf/campaign/laptop.yaml

The same code path and options as `aar campaign` (`--resume`, `--home`, key=value overrides).
Inside a job RAY_ADDRESS points at the cluster, and the working directory is Ray's temporary
copy of the checkout, so state goes to the aar home (--home, else $AAR_HOME on the node, else
~/.aar), an absolute path: a later job, or `aar campaign status` from any directory, sees it.
"""

import sys

try:
    from aar_ray.cli import main
except ImportError as err:  # the head was started from a Python without the project
    sys.exit(f"jobs/campaign.py: {err}. This job's `python` ({sys.executable}) is the one on PATH "
             "when `ray start` ran: start the head with the project's venv active "
             "(source .venv/bin/activate; ray start --head ...), see the README")

if __name__ == "__main__":
    sys.exit(main(["campaign", *sys.argv[1:]]))
