"""Safe file writes: atomic replacement, and the guards around an output a run will write.

Atomic writes (a reader, or a crash, sees either the old file or the whole new one) are used for
everything tinylm writes that a user keeps: model files, checkpoints, the default corpus and token
caches. Beside them: whether two paths are one file (links included), whether a folder takes new
files, the removal of temp files a killed write left behind, and an exclusive lock on an output so
two runs never write it at once. Knows nothing about what the bytes are.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

_TEMP = re.compile(r"\.(.+)\.(?:tmp|link)(\d+)")  # .NAME.tmp<pid> (atomic_write_bytes), .NAME.link<pid> (state.py)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether paths `a` and `b` name one file: the same resolved path (symlinks followed), or the
    same (st_dev, st_ino), so that a hard link to a file counts as the file."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:  # one of them does not exist (yet): only the path could make them one
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies somewhere under it (after resolving both)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def writable_folder(folder: str | os.PathLike) -> str | None:
    """None if a new file can be created in `folder`, else the reason (e.g. "Permission denied").
    Checked by creating and removing a probe file, which is what a later write will need."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tinylm-write-test", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    return True


def stale_temps(folder: str | os.PathLike, names: set[str] | None = None) -> list[Path]:
    """Temp files in `folder` left by a write that was killed: `.NAME.tmp<pid>` (or `.link<pid>`)
    whose process is gone. `names`: only those for these NAMEs (None = any). A live process's temp
    file is a write in progress and is never listed."""
    folder = Path(folder)
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    found = []
    for entry in entries:
        m = _TEMP.fullmatch(entry)
        if m and (names is None or m.group(1) in names) and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
            if (folder / entry).is_file() and not (folder / entry).is_symlink():
                found.append(folder / entry)
    return sorted(found)


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of output `out`: models/book.model -> models/.book.model.lock."""
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """An exclusive lock (fcntl.flock) on the lock file beside an output, holding the pid of the
    process that owns it. The kernel drops a flock when its process dies, so a lock file left by a
    killed run never blocks the next one; `release` removes the file. `acquire` returns None, or
    the pid (possibly "unknown") of the process that holds it."""

    def __init__(self, out: str | os.PathLike):
        self.path = lock_path(out)
        self.fd: int | None = None

    def acquire(self) -> str | None:
        import fcntl  # noqa: PLC0415 - POSIX only

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return holder
                raise
            # subtle: the owner removes the file when it is done; if that happened between our open
            # and our flock, we hold a lock on a removed file: open the path again
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before the unlock, so a waiting run cannot lock a file about to vanish
        os.close(self.fd)
        self.fd = None
