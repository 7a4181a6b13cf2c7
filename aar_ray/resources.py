"""The defaults that ship inside the package: `aar_ray/conf/` (directions, prices, model presets,
campaign presets, the baseline config), found through importlib.resources so that a wheel
install finds them as well as a checkout. In a checkout `aar_ray/conf` is a link to the top-level
`conf/` that users edit and pass to `--config`, so there is one copy."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def conf_dir() -> Path:
    """The packaged `conf/` folder. Installed packages are plain folders (never zip files), so it
    is a real path that YAML readers and `--config` can open."""
    return Path(str(files("aar_ray") / "conf"))


def conf_file(*parts: str) -> Path:
    """A packaged default, e.g. ``conf_file("models", "qwen_math.yaml")``."""
    return conf_dir().joinpath(*parts)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this pid namespace is running: another user's process counts
    as running, a zombie (killed, not yet reaped) as dead. The campaign lock and the sandbox's
    leftover cgroups both ask."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:  # a zombie's /proc/<pid>/stat says Z after its command name, which may hold ")"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
