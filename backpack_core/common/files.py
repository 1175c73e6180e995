"""Writing files so that a reader (or a resumed run) never sees half of one.

`atomic_write(path, write)` lets `write` fill a temporary file in the same directory, flushes it
to disk, and renames it over `path` (os.replace is atomic on POSIX): a crash leaves either the old
file or the new one, plus at most a `.NAME.*.tmp` file that nothing reads. `locked(directory)`
keeps a second writer out of a directory while the first works in it.

Reading is bounded too: `read_prefix` / `read_bounded` never read past a limit (a device such as
/dev/zero, or a pipe, reports no size to check first), and `parse_json` / `read_json` refuse JSON
nested deeper than limits.MAX_JSON_DEPTH as malformed JSON, never with a RecursionError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backpack_core.common.limits import MAX_DATA_FILE_BYTES, MAX_JSON_DEPTH, LimitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """`write(tmp_path)` writes the content; then it is flushed and renamed onto `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; our files are for everyone to read
    try:
        write(Path(tmp))
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def os_error_of(err: BaseException) -> OSError | None:
    """The operating system's error behind `err`, or None. Writers report a failed write in their
    own way: Python raises OSError; torch.save into a Python file raises RuntimeError with the
    OSError as its context; safetensors (Rust) raises SafetensorError("... (os error 28)")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            return err
        found = re.search(r"\(os error (\d+)\)", str(err))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        err = err.__cause__ or err.__context__
    return None


def is_disk_full(err: BaseException) -> bool:
    """True when `err` is (or was caused by) a full disk or an exhausted quota."""
    os_err = os_error_of(err)
    return os_err is not None and os_err.errno in (errno.ENOSPC, errno.EDQUOT)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


LOCK_FILE = ".lock"


class LockedError(ValueError):
    """Another process holds the lock of a directory; the message names its pid."""


@contextlib.contextmanager
def locked(directory: str | os.PathLike, what: str = "another process") -> Iterator[None]:
    """Hold an exclusive lock on `directory` (fcntl.flock on its `.lock` file, which holds our
    pid) for the duration of the block; LockedError at once when another process holds it. The
    kernel releases the lock when the process ends, however it ends (kill -9 included)."""
    path = Path(directory) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise LockedError(f"{directory} is in use by {what} (pid {holder}, which holds {path}); "
                              "wait for it to end or stop it, or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_prefix(path: str | os.PathLike, limit: int) -> bytes:
    """At most limit + 1 bytes of a file: one more than `limit` says there is more."""
    with open(path, "rb") as f:
        return f.read(limit + 1)


def read_bounded(path: str | os.PathLike, limit: int, what: str, setting: str,
                 error: type[Exception] = LimitError) -> bytes:
    """The bytes of a file of at most `limit` bytes; `error` (naming the limit's environment
    variable BACKPACK_`setting`) when it holds more, after reading no more than limit + 1."""
    data = read_prefix(path, limit)
    if len(data) > limit:
        raise error(f"{what} is too long: more than {limit:,} bytes; the limit is {limit:,} bytes "
                    f"(BACKPACK_{setting})")
    return data


def _too_deep(doc: str, reason: str) -> json.JSONDecodeError:
    return json.JSONDecodeError(f"nested more than {MAX_JSON_DEPTH} levels deep ({reason}); the limit "
                                "is BACKPACK_MAX_JSON_DEPTH", doc, 0)


def parse_json(text: str | bytes) -> Any:
    """json.loads, with nesting bounded by MAX_JSON_DEPTH: deeper input raises JSONDecodeError
    (as any malformed JSON does), never RecursionError here or in the code that walks the result."""
    doc = text if isinstance(text, str) else text.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except RecursionError:
        raise _too_deep(doc, "past Python's recursion limit") from None
    stack = [(data, 1)]
    while stack:  # iterative: checking the depth must not recurse either
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep(doc, f"at least {depth} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return data


def read_json(path: str | os.PathLike, what: str, limit: int = MAX_DATA_FILE_BYTES) -> Any:
    """A JSON data file, read no further than `limit` bytes and nested at most MAX_JSON_DEPTH
    deep, or one clear error naming the file and what is wrong with it (OSError when it cannot
    be read, LimitError when too long, ValueError when it is not UTF-8 JSON)."""
    try:
        raw = read_bounded(path, limit, f"the {what} file {str(path)!r}", "MAX_DATA_FILE_BYTES")
    except OSError as err:
        raise OSError(f"cannot read the {what} file {str(path)!r}: {err.strerror or err}") from None
    try:
        return parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"the {what} file {str(path)!r} is not UTF-8 text (byte {raw[err.start]:#04x} "
                         f"at offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"the {what} file {str(path)!r} is not valid JSON: {err}") from None


def make_dir_readable(path: str | os.PathLike) -> None:
    """mkdtemp makes 0700 directories; a model directory is for everyone to read."""
    os.chmod(path, 0o777 & ~_umask())
