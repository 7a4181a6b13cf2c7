"""`ray job submit --working-dir . -- python jobs/baseline.py [aar baseline options]`.

The same code path as `aar baseline`; inside a Ray job, RAY_ADDRESS points at the cluster.
"""

import sys

from aar_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["baseline", *sys.argv[1:]]))
