"""Reading files that come from outside, and replacing files atomically.

Reading: only regular files are opened (a FIFO would block forever, ``/dev/zero`` never ends, a device may act
on being opened), and no more bytes are read than the file's size said when it was opened. A pseudo-file that
claims to be empty (``/proc/kmsg`` blocks when read) is read as empty, never waited on.

Writing: `AtomicFile` writes next to its destination under a temporary name and renames it into place only
when told, so a reader never sees half a file and a failed write leaves the old file as it was. Temporary
names carry the writer's process id; a temporary file whose writer no longer runs (a killed process) is
removed by the next writer of the same destination.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import DgsError

__all__ = ["ConfinedPath", "inside", "opened_path", "open_regular", "read_regular", "file_sha256", "AtomicFile"]

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class ConfinedPath(os.PathLike):
    """A path that may only be read where it leads inside ``root`` (a real path): a file found in a scanned
    folder, which a symbolic link swapped in after the folder was listed must not lead out of."""

    def __init__(self, path: str, root: str) -> None:
        self.path, self.root = path, root

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"ConfinedPath({self.path!r}, root={self.root!r})"


def inside(path: str, root: str) -> bool:
    """Whether the real path ``path`` is ``root`` or lies under it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def opened_path(fd: int, name: str) -> str:
    """The real path of the file open at ``fd``: from the kernel where it says (/proc), else from ``name``."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(name)


def open_regular(path: str | os.PathLike, max_bytes: int, error: type[DgsError]) -> tuple[BinaryIO, int]:
    """Open a regular file for reading, refusing anything else unopened.

    Returns the open file and its size at opening. Raises ``error`` with a message that names the file: not
    found (a broken link says so), a directory, not a regular file, larger than ``max_bytes``, permission
    denied, changed while being opened, or, for a `ConfinedPath`, opened outside its root.
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{name}: is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name}: is not a regular file (a device, pipe or socket); it was not opened")
        if st.st_size > max_bytes:
            raise error(f"{name}: file too large ({st.st_size:,} bytes; the limit is {max_bytes:,})")
        fd = os.open(name, _READ_FLAGS)
    except FileNotFoundError:
        if os.path.islink(name):
            raise error(f"{name}: broken symbolic link (target {os.readlink(name)!r} does not exist)") from None
        raise error(f"{name}: no such file") from None
    except PermissionError:
        raise error(f"{name}: permission denied") from None
    except OSError as e:
        raise error(f"{name}: cannot be opened ({e.strerror or e})") from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or opened.st_size > max_bytes:
        os.close(fd)
        raise error(f"{name}: changed while it was being opened")
    if isinstance(path, ConfinedPath) and not inside(real := opened_path(fd, name), path.root):
        os.close(fd)
        raise error(f"{name}: leads to {real}, outside the scanned folder {path.root}; not read")
    return os.fdopen(fd, "rb"), opened.st_size


def read_regular(
    path: str | os.PathLike, max_bytes: int, error: type[DgsError], reserve: Callable[[int], None] | None = None
) -> bytes:
    """The bytes of a regular file, at most as many as its size when opened (see `open_regular`).

    ``reserve``, when given, is called with that size before anything is read (to account for the memory).
    """
    f, size = open_regular(path, max_bytes, error)
    with f:
        if reserve is not None:
            reserve(size)
        try:
            return f.read(size) if size else b""
        except OSError as e:  # includes EAGAIN from a pseudo-file opened non-blocking
            raise error(f"{os.fspath(path)}: cannot be read ({e.strerror or e})") from None


def file_sha256(path: str | os.PathLike, error: type[DgsError]) -> str:
    """The sha256 of a regular file's bytes, streamed a megabyte at a time (at most its size when opened; see
    `open_regular`, whose errors it raises, as it raises a failed read)."""
    f, size = open_regular(path, sys.maxsize, error)
    digest = hashlib.sha256()
    with f:
        try:
            while size > 0 and (chunk := f.read(min(1 << 20, size))):
                digest.update(chunk)
                size -= len(chunk)
        except OSError as e:
            raise error(f"{os.fspath(path)}: cannot be read ({e.strerror or e})") from None
    return digest.hexdigest()


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class AtomicFile:
    """A file written under a temporary name beside ``path`` and renamed over it by `commit`.

    Until `commit`, ``path`` keeps its old content (or stays absent); after it, writes continue into ``path``
    itself. Closing without a commit (an error, an interruption) removes the temporary file. As a context
    manager it commits on a normal exit.

    Example:
        >>> with AtomicFile("model.dgs") as out:
        ...     out.file.write(data)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        folder = self.path.parent
        self._remove_stale(folder, self.path.name)
        self.tmp = folder / f"{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self.file: BinaryIO = os.fdopen(fd, "w+b")
        self.committed = False

    @staticmethod
    def _remove_stale(folder: Path, name: str) -> None:
        """Remove ``<name>.<pid>-<token>.tmp`` files whose writing process no longer runs."""
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            middle = entry.name[len(name) + 1 : -len(".tmp")]
            if not (entry.name.startswith(name + ".") and entry.name.endswith(".tmp") and "-" in middle):
                continue
            pid = middle.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _process_is_alive(int(pid)):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def commit(self) -> None:
        """Put the content written so far in place of ``path``; later writes go on into ``path``."""
        if not self.committed:
            self.file.flush()
            os.replace(self.tmp, self.path)
            self.committed = True

    def close(self) -> None:
        """Close the file; without a commit, the temporary file is removed and ``path`` is untouched."""
        try:
            self.file.close()
        finally:
            if not self.committed:
                try:
                    os.unlink(self.tmp)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            self.close()
