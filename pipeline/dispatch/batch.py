"""A batch folder on disk: `<folder>/dispatch/<batch id>/` with its manifest and JSON files.

`manifest.json` (launcher, job ids, log folder) is written by `dispatch`; `status/<i>.json` by
each job; the local queue adds its own files (`pipeline.dispatch._local_queue`). Every writer
replaces a file atomically, so readers in other processes never see a partial one.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a concurrent reader sees the old or the new file, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Read a JSON file written by `write_json_atomic`; None if it does not exist yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def new_batch_id() -> str:
    """A batch folder name: creation time (sorts by age) and a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def batch_folders(folder: str | Path) -> list[Path]:
    """Every batch dispatched under `folder`, oldest first (`folder` itself if it is one)."""
    folder = Path(folder).resolve()
    if (folder / MANIFEST).exists():
        return [folder]
    for parent in (folder / "dispatch", folder):
        if not parent.is_dir():
            continue
        batches = sorted(p for p in parent.iterdir() if (p / MANIFEST).exists())
        if batches:
            return batches
    return []


def batch_folder(folder: str | Path) -> Path:
    """The batch folder for `folder`: itself if it holds a manifest, else its latest batch."""
    batches = batch_folders(folder)
    if not batches:
        folder = Path(folder).resolve()
        raise FileNotFoundError(
            f"no dispatched batch in {folder} (expected {folder}/dispatch/<batch>/{MANIFEST})"
        )
    return batches[-1]
