"""Owner liveness through lock files: is the journal instance creating a key still alive?

Each open `SQLiteJournal` holds an exclusive ``fcntl.flock`` on its own lock file,
``<journal>.owners/<token>.lock``, named by a random 128-bit token; records carry the token
of the instance creating them. An owner is alive while its lock is held: testing takes the
lock without blocking, which fails exactly while the holder lives. The kernel drops the lock
when the process dies, ``kill -9`` included, so no timeout or PID guess is involved (and a
reused PID cannot fool it). The file is made under a temporary name and renamed once locked,
so every ``.lock`` name is locked from birth; dead owners' files are removed when found.
``flock`` locks belong to the open file, so two instances in one process are told apart
too; a child made by ``fork`` shares its parent's lock until it exits. Local file systems
only (``flock`` over NFS is not reliable). Where ``fcntl`` is missing (Windows) an owner
counts as alive while its lock file exists: a crash then leaves the file behind, and its
keys stay BUSY until that file is deleted by hand (`SQLiteJournal.owner_file` names it).

Synchronous file work: the journal calls it from its worker thread, never on the loop.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
from typing import Any

from .errors import JournalError

try:
    import fcntl
except ImportError:  # Windows: liveness degrades to "the lock file exists" (see above)
    _fcntl: Any = None
else:
    _fcntl = fcntl

__all__ = ["Owners"]

_TOKEN = re.compile(r"[0-9a-f]{32}")
_LOCK_SUFFIX = ".lock"


class Owners:
    """This instance's owner lock, and the liveness test of other owners' locks."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.token = ""
        self._fd: int | None = None
        self._dead: set[str] = set()  # a dead owner never comes back

    def path(self, token: str) -> pathlib.Path:
        """The lock file of the owner ``token``."""
        return self.directory / f"{token}{_LOCK_SUFFIX}"

    def acquire(self) -> None:
        """Make and lock this instance's file: locked under a temporary name, then renamed,
        so that a ``.lock`` name is never seen unlocked while its owner lives."""
        for _ in range(100):
            token = secrets.token_hex(16)
            temporary = self.directory / f".{token}.tmp"
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                continue  # another instance removed the empty directory just now
            try:
                if _fcntl is not None:
                    _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.rename(temporary, self.path(token))
            except OSError as error:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                if isinstance(error, (BlockingIOError, FileNotFoundError)):
                    continue  # a sweep held or removed the temporary file: try a new token
                raise
            self.token, self._fd = token, fd
            return
        raise JournalError(f"could not create an owner lock file in {self.directory}")

    def alive(self, token: str) -> bool:
        """Whether the instance ``token`` still holds its lock (this one always does)."""
        if token == self.token:
            return True
        if token in self._dead or not _TOKEN.fullmatch(token):
            return False
        if self._probe(self.path(token)):
            return True
        self._dead.add(token)
        return False

    def _probe(self, path: pathlib.Path) -> bool:
        """Try the lock: held means alive; taken means dead, and its file is removed."""
        if _fcntl is None:
            return path.exists()
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while we hold its lock: no live owner can own this name
            return False
        finally:
            os.close(fd)

    def sweep(self) -> None:
        """Remove the lock files of owners that died (a crash leaves them behind)."""
        if _fcntl is None:
            return
        with contextlib.suppress(FileNotFoundError):
            for path in self.directory.iterdir():
                token = path.name.removesuffix(_LOCK_SUFFIX)
                if path.name.endswith(_LOCK_SUFFIX) and token != self.token:
                    self._probe(path)

    def release(self) -> None:
        """Unlock and remove this instance's file, and the directory if it is now empty."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(self.token))
        os.close(fd)  # closing drops the flock
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)  # fails, as it should, while other owners live
