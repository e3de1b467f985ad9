"""Files written whole or not at all: a patch, an export, a sweep's stored result.

A crash, a killed worker or a full disk mid-write must not leave half a file under the real name,
where the next run would take it for a finished one (a sweep skips stored results) or a user would
load it. Everything is written under a staging name beside its place and renamed at the end.
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["written"]


@contextmanager
def written(path: str | Path) -> Iterator[Path]:
    """A staging name beside `path` to write a file or a folder to; it becomes `path` when the block ends
    without error (a folder may replace only an empty one) and is removed when it does not."""
    path = Path(path)
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield staged
        staged.replace(path)
    finally:
        if staged.is_dir():
            shutil.rmtree(staged)
        else:
            staged.unlink(missing_ok=True)
