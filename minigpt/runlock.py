"""One run per folder: a lock that two `minigpt train` (or `finetune`) processes cannot share.

Two runs writing into one out_dir interleave their metrics and overwrite each other's
checkpoints, and both exit 0. The first run to start takes `out_dir/.minigpt.lock` and holds it
until it ends; the second exits at once with a message that names the holder.

The lock is an operating-system file lock (`flock`; `msvcrt.locking` on Windows), so the kernel
releases it the moment its process dies, however it dies: there is no window in which two
processes both believe they took over a stale lock. The file's content, the holder's PID, host
and start time, is only for the messages: a lock file left by a process that is gone is taken
over with a note saying so.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".minigpt.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the folder's run lock."""


# Locks this process holds, by folder: a second Trainer in the same process (a notebook cell run
# twice) shares the lock instead of locking itself out.
_HELD: dict[Path, RunLock] = {}


class RunLock:
    """The run lock of `folder`. `acquire()` takes it or raises RunLockedError; `release()`
    (or the end of the process) gives it back. Re-entrant within one process."""

    def __init__(self, folder):
        self.folder = Path(folder).resolve()
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._count = 0
        self._created: list[Path] = []  # folders acquire() made, innermost first
        self.took_over: dict | None = None  # the record of a dead holder whose lock we took

    def acquire(self) -> RunLock:
        held = _HELD.get(self.folder)
        if held is not None:  # this process already holds it
            held._count += 1
            return held
        self._created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = _read_record(fd)
                os.close(fd)
                raise RunLockedError(_held_message(self.folder, holder))
            # The previous holder may have removed the file between our open and our lock: then
            # we locked a file no one else will see. Start again on the file that is there now.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        previous = _read_record(fd)
        if previous.get("host", socket.gethostname()) != socket.gethostname():
            # On a shared file system we cannot see whether a process on another machine is
            # alive, and file locks across machines are not reliable everywhere: ask the user.
            os.close(fd)
            raise RunLockedError(
                _held_message(self.folder, previous) + f"; if that run is over, delete {self.path}")
        if previous:
            self.took_over = previous
        _write_record(fd)
        self._fd, self._count = fd, 1
        _HELD[self.folder] = self
        atexit.register(self._release_at_exit)
        return self

    def _release_at_exit(self) -> None:
        self._count = 1
        self.release()

    def release(self) -> None:
        if self._fd is None:
            return
        self._count -= 1
        if self._count > 0:
            return
        _HELD.pop(self.folder, None)
        atexit.unregister(self._release_at_exit)
        try:
            self.path.unlink(missing_ok=True)  # a clean finish leaves no lock file behind
        finally:
            os.close(self._fd)  # closing releases the OS lock
            self._fd = None
        for folder in self._created:  # a run that failed at once leaves no empty folders
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or gone): the run wrote something, keep it

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def took_over_message(record: dict, folder: Path) -> str:
    return (f"taking over the run lock of {folder}: process {record.get('pid')} on "
            f"{record.get('host')} (started {record.get('started')}) is gone")


def _held_message(folder: Path, holder: dict) -> str:
    who = (f"process {holder.get('pid')} on {holder.get('host')}, running since "
           f"{holder.get('started')} ({holder.get('command', '?')})") if holder else \
        "another process"
    return (f"{folder} is in use by {who}. Wait for it to finish or stop it, or choose another "
            "out_dir")


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]}


def _read_record(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(fd: int) -> None:
    data = (json.dumps(_record()) + "\n").encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            # lock a byte far past the record, so reading the record stays possible
            os.lseek(fd, 1 << 20, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
