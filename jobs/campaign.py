"""`ray job submit --working-dir . -- python jobs/campaign.py --config conf/campaign/<preset>.yaml`.

The same code path as `aar campaign`; inside a Ray job, RAY_ADDRESS points at the cluster.
"""

import sys

from aar_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["campaign", *sys.argv[1:]]))
