"""Files: outputs written so that an interrupted stage never leaves something that looks
finished, JSON in stable bytes, and content hashes.

Every output is written under a temporary name beside its target and renamed into place only
when complete; a rename within one folder is atomic on POSIX file systems.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write a file or folder to; move it onto ``target`` on success.

    On an exception the temporary path is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(temporary)
    try:
        yield temporary
        if target.is_dir() and not target.is_symlink():
            # A folder cannot be replaced by rename(2) while it has content: move the old one
            # aside first, so the window without a complete target is one rename long.
            retired = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(retired)
            temporary.rename(target)
            _remove(retired)
        else:
            temporary.replace(target)
    except BaseException:
        _remove(temporary)
        raise


def write_json(target: Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON (stable bytes for ``dvc.lock``)."""
    with atomic_path(target) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
