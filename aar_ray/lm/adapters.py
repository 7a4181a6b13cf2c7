"""Where LoRA adapters live: a local folder or a URI pyarrow.fs can write (s3://, gs://), copied
whole so that a reader never sees half an adapter."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from pathlib import Path

def _is_uri(location: str) -> bool:
    return "://" in location


def adapter_location(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if _is_uri(root) else str(Path(root).expanduser() / name)


def put_adapter(local_dir: Path, location: str) -> None:
    """Copy a saved adapter folder to a local folder or a URI (replacing what was there)."""
    if _is_uri(location):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(location)
        fs.create_dir(path, recursive=True)
        fs.delete_dir_contents(path, missing_dir_ok=True)
        pafs.copy_files(str(local_dir), path, destination_filesystem=fs)
        return
    dest = Path(location)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
    shutil.copytree(local_dir, staging)
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)  # readers never see a half-written adapter


def fetch_adapter(location: str) -> str:
    """A local folder holding the adapter at `location` (URIs are copied to a local cache)."""
    if not _is_uri(location):
        return str(Path(location).expanduser())
    import pyarrow.fs as pafs

    key = hashlib.sha1(location.encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / "aar_ray_adapters" / key
    if local.exists():
        shutil.rmtree(local)
    local.mkdir(parents=True)
    pafs.copy_files(location, str(local))
    return str(local)
