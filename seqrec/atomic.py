"""Writes that are either complete or absent: write to a temporary name beside the target, then rename.

`os.replace` is atomic on POSIX within one file system, so a reader (or a run killed mid-write) never
sees a half-written file or folder. Temporary names carry the writer's pid; what a killed writer
left behind is removed by the next write to the same target.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f"{_prefix(path)}old")
    if path.exists():
        os.replace(path, old)  # a folder cannot be renamed over a non-empty folder: move the old one aside
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of `path` whose writer process no longer exists (it was killed)."""
    for leftover in Path(path).parent.glob(f".{Path(path).name}.pid*.*"):
        pid = leftover.name[len(Path(path).name) + 5:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _prefix(path: Path) -> str:
    return f".{path.name}.pid{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
