"""Where state lives: the aar home, the one storage root (testbeds, sealed labels, forum, MLflow
store, adapters), as an absolute path that is the same from every directory and never inside the
temporary copy of the working tree that a Ray job runs in.
"""

from __future__ import annotations

import os
from pathlib import Path

from aar_ray import environment
from aar_ray.errors import ConfigError

# `ray job submit` runs the entrypoint in the node's copy of the uploaded working directory,
# <temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/, deleted with the session.
RAY_WORKING_DIR_MARK = os.path.join("runtime_resources", "working_dir_files")


def in_ray_job() -> bool:
    """True in a process started by `ray job submit` (or any process whose working directory is
    a Ray working_dir package), where a relative path would land in a folder Ray deletes."""
    return environment.started_by_ray_job() or RAY_WORKING_DIR_MARK in os.getcwd()


def default_home() -> str:
    """`$AAR_HOME`, else `~/.aar`: one per user, the same from every directory."""
    return environment.aar_home() or "~/.aar"


def resolve_home(home: str | os.PathLike | None = None, key: str = "home") -> str:
    """The storage root as an absolute path. Empty means `default_home()`. A relative path is
    taken against the working directory where a person typed the command, and refused inside a
    Ray job, where the working directory is Ray's temporary copy of the tree."""
    given = str(home) if home else default_home()
    if not home:
        key = "AAR_HOME" if environment.aar_home() else key
    if "://" in given:
        raise ConfigError(
            f"{key}={given!r}: object-store URIs are not supported as the aar home; use a path, "
            "on a cluster a mount every node shares (NFS, an RWX volume), e.g. home=/mnt/aar")
    path = Path(given).expanduser()
    if not path.is_absolute():
        if in_ray_job():
            raise ConfigError(
                f"{key}={given!r} is relative, and this process runs inside a Ray job, whose working "
                f"directory ({os.getcwd()}) is Ray's temporary copy of the uploaded files: state "
                f"there is lost when the job ends. Set {key} to an absolute path, on a cluster one "
                f"every node mounts (e.g. {key}=/mnt/aar), or leave home and AAR_HOME unset for "
                "~/.aar of the user running Ray")
        path = Path.cwd() / path
    return os.path.normpath(path)


__all__ = ["default_home", "in_ray_job", "resolve_home"]
