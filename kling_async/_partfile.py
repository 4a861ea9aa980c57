"""The temporary file a download writes: created next to the destination, locked while in
use, fsynced and renamed into place when whole.

Blocking code: every function runs in a worker thread. A partial file never has the final
name, whatever happens to the process; a killed process's leftover (``.<name>.<random>.part``,
unlocked) is removed by the next download to the same destination.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import re
import secrets
import stat
import sys

if sys.platform != "win32":
    import fcntl

__all__ = ["PartFile", "fsync_directory", "is_directory", "lock"]

logger = logging.getLogger("kling_async")

_PART = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.part")


def is_directory(dest: str | os.PathLike[str]) -> bool:
    """Whether ``dest`` names a folder to download into: it ends with a path separator, has no
    suffix (``videos``, not ``video.mp4``), or is an existing directory."""
    text = os.fspath(dest)
    if text.endswith(("/", os.sep)):
        return True
    path = pathlib.Path(text)
    return not path.suffix or path.is_dir()


class PartFile:
    """The ``.<name>.<random>.part`` file a download writes, renamed into place when whole.

    It is locked (``flock``, POSIX) while in use, so that the next download to the same
    destination can tell a leftover of a killed process (unlocked: removed) from a download
    in progress (locked: left alone).
    """

    def __init__(self, final: pathlib.Path, temp: pathlib.Path, fd: int) -> None:
        self.final = final
        self.temp = temp
        self.fd: int | None = fd
        self.size = 0

    @classmethod
    def create(cls, dest: pathlib.Path, name: str, *, as_directory: bool) -> PartFile:
        if as_directory:
            if dest.exists() and not dest.is_dir():
                raise FileExistsError(
                    errno.EEXIST,
                    "a file has the name of the directory to download into (a destination "
                    "without a suffix names a directory)",
                    str(dest),
                )
            dest.mkdir(parents=True, exist_ok=True)
            final = dest / name
        else:
            final = dest
        if final.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a directory has the file's name", str(final))
        directory = final.parent
        if not directory.is_dir():
            raise FileNotFoundError(
                errno.ENOENT, "no such directory to download into", str(directory)
            )
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        prefix = f".{final.name[:200]}."
        for _ in range(100):
            temp = directory / f"{prefix}{secrets.token_hex(6)}.part"
            try:
                fd = os.open(temp, flags, 0o666)  # the umask applies, as for any new file
            except FileExistsError:
                continue
            if not lock(fd, temp):  # removed as a leftover before it was locked: next name
                os.close(fd)
                continue
            part = cls(final, temp, fd)
            part.remove_leftovers(prefix)
            return part
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))

    def remove_leftovers(self, prefix: str) -> None:
        """Delete the unlocked ``.part`` files of this destination: a killed process left them."""
        if sys.platform == "win32":  # pragma: no cover - no flock
            return
        try:
            names = os.listdir(self.temp.parent)
        except OSError:
            return
        for name in names:
            if not name.startswith(prefix) or name == self.temp.name or not _PART.fullmatch(name):
                continue
            if len(name) != len(self.temp.name):
                continue  # another destination whose name begins with this one's
            path = self.temp.parent / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a download in progress holds it
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
                    logger.info("removed %s, left by an interrupted download", path)
            finally:
                os.close(fd)

    def write(self, chunks: list[bytes]) -> None:
        assert self.fd is not None
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view) :]
            self.size += len(chunk)

    def reset(self) -> None:
        """Start over: the server sent the whole body again."""
        assert self.fd is not None
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        self.size = 0

    def commit(self) -> None:
        """Make the bytes durable, then give them the final name in one atomic step; a file
        replaced keeps its permission bits."""
        assert self.fd is not None
        fd, self.fd = self.fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                mode = stat.S_IMODE(os.stat(self.final).st_mode)
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                else:  # pragma: no cover - Windows
                    os.chmod(self.temp, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.temp, self.final)
        fsync_directory(self.final.parent)

    def discard(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        self.temp.unlink(missing_ok=True)


def lock(fd: int, path: pathlib.Path) -> bool:
    """Lock a new temporary file; False when another download removed it before the lock.
    A file system without locks downloads unlocked (its leftovers are then never removed)."""
    if sys.platform == "win32":  # pragma: no cover - no flock
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # another download is removing it as a leftover
    except OSError:  # pragma: no cover - no locks here (some network file systems)
        return True
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def fsync_directory(directory: pathlib.Path) -> None:
    """Persist the rename itself (POSIX); a platform that cannot open directories skips it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
