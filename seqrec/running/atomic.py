"""Writes that are either complete or absent: write to a temporary name beside the target, then rename.

`os.replace` is atomic on POSIX within one file system, so a reader (or a run killed mid-write) never
sees a half-written file or folder. Temporary names carry the writer's pid
(`.<name>.pid<N>.<random>.tmp`, and `.<name>.pid<N>.old` for a folder being replaced); what a killed
writer left under exactly those names is removed by the next write to the same target, and nothing
else ever is. A folder is replaced only when its owner says it is one of the project's (`is_ours`):
a user's file or folder at that path is an error, never moved or deleted.

Files and folders get the permissions the user's umask gives any new file (mkstemp alone would make
them private to the user). An OSError while writing (a read-only folder, a full disk) becomes one
UserError line naming the path.
"""
from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from seqrec.running.errors import UserError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file to `path`."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise UserError(f"{path} is a folder; give a file name (nothing was written)")
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            os.chmod(tmp, 0o666 & ~umask())
            write(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def atomic_directory(path: Path, is_ours: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed.

    `path` may be missing, an empty folder, or a folder `is_ours` accepts; anything else (a file, a
    user's folder) is a UserError naming it and `what` it should be, before anything is written."""
    path = Path(path)
    check_replaceable(path, is_ours, what)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~umask())
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        check_replaceable(path, is_ours, what)          # still ours: nothing else wrote there meanwhile
        old = path.with_name(f"{_prefix(path)}old")
        if path.exists():
            os.replace(path, old)  # a folder cannot be renamed over a non-empty folder: move ours aside
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(path: Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """A UserError unless `path` is missing, an empty folder, or a folder `is_ours` accepts."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UserError(f"{path} exists and is not a folder; it cannot be {what}: pick another path "
                        "(nothing was changed)")
    if path.is_dir() and any(path.iterdir()) and not is_ours(path):
        raise UserError(f"{path} is a folder this project did not write (it is not {what}); pick another "
                        "path or empty it yourself (nothing was changed)")


def check_writable(folder: Path, what: str) -> None:
    """A UserError naming `folder` unless files can be written in it (or, while it does not exist yet,
    folders made in its nearest existing parent): called before long work, so a read-only place fails
    at once, not after training. Creates nothing that stays."""
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {folder} is {'a file' if existing == folder else f'under the file {existing}'}, "
                        "not a folder; pick another path (nothing was changed)")
    try:
        if not os.access(existing, os.W_OK | os.X_OK):          # EROFS or permissions, without writing
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(existing))
        if existing == folder:                                  # a file of ours, at once removed
            fd, probe = tempfile.mkstemp(prefix=_prefix(folder / "probe"), suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write {what} {folder}: {e.strerror or type(e).__name__}; pick a path you can "
                        "write to (or free space / fix its permissions)") from None


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError raised while writing `path` into one UserError line naming the path and why."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {e.filename or path}: {e.strerror or type(e).__name__}; pick a path you "
                        "can write to (or free space / fix its permissions)") from None


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of `path` whose writer process no longer exists (it was killed): only names
    of exactly the forms this module makes, `.<name>.pid<N>.<random>.tmp` and `.<name>.pid<N>.old`."""
    ours = re.compile(rf"\.{re.escape(Path(path).name)}\.pid(\d+)\.(?:[A-Za-z0-9_]+\.tmp|old)")
    for leftover in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.pid*"):
        match = ours.fullmatch(leftover.name)
        if match and not _alive(int(match.group(1))) and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
