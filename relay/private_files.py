"""Files and directories only the relay's own user may read: directories 0700, files 0600.

Interview recordings, transcripts, the state key and the embedded database are nobody
else's business on a shared machine, so the relay never leaves their mode to the umask
(commonly 022: every local user could read them). Each writer creates through these:

* ``private_dir(path)``: creates the directory 0700 (missing parents as ``mkdir -p``
  would: the directory itself is what keeps its content private) and tightens an existing
  one to 0700, so recordings written by an older version under a 0755 directory become
  unreachable too. One exception: an "others may enter" bit (never "list") is kept while
  a directory in it belongs to another user, who must enter to reach it: the embedded
  PostgreSQL's cluster in ``server.data_dir``, run as its own system user when the relay
  runs as root (relay.db.embedded_pg sets that bit).
* ``open_private(path, mode)``: opens a file for writing, created 0600; an existing file
  of a wider mode is narrowed first.
* ``create_private(path)``: an empty 0600 file, for writers that open the path themselves
  (PyAV, ``wave``, ``numpy.memmap``): opening an existing file keeps its mode.
* ``write_private(path, data)``: write a whole file atomically (a 0600 temporary, renamed).

All block (file-system calls): run them off the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path
from typing import IO, Literal, overload

log = logging.getLogger("relay.files")

DIR_MODE = 0o700
FILE_MODE = 0o600

_FLAGS = {
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
}


def private_dir(path: Path) -> Path:
    """``path`` as a directory of mode 0700 (module docstring); returns it."""
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=DIR_MODE, exist_ok=True)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    mode = stat.S_IMODE(info.st_mode)
    wanted = DIR_MODE
    if mode & stat.S_IXOTH and _holds_others_directory(path, info.st_uid):
        wanted |= stat.S_IXOTH
    if mode != wanted:
        try:
            path.chmod(wanted)
        except PermissionError:
            # Not ours (a mount point, say): say so rather than refuse to start.
            log.warning("%s is mode %o and could not be made %o", path, mode, wanted)
        else:
            if mode & stat.S_IXOTH & ~wanted and _holds_others_directory(path, info.st_uid):
                # That directory appeared meanwhile, and its owner may already have checked
                # the bit (relay.db.embedded_pg: it chowns before it checks): put it back.
                path.chmod(wanted | stat.S_IXOTH)
            elif mode & 0o077 & ~wanted:
                log.info("%s was mode %o; now %o", path, mode, wanted)
    return path


def _holds_others_directory(path: Path, owner: int) -> bool:
    for child in path.iterdir():
        with contextlib.suppress(OSError):  # gone meanwhile
            info = child.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid != owner:
                return True
    return False


@overload
def open_private(path: Path, mode: Literal["ab", "wb"]) -> IO[bytes]: ...
@overload
def open_private(path: Path, mode: Literal["w"]) -> IO[str]: ...
def open_private(path: Path, mode: Literal["ab", "wb", "w"]) -> IO[bytes] | IO[str]:
    """Open ``path`` for writing, created 0600 (an existing file is narrowed to 0600)."""
    fd = os.open(path, _FLAGS[mode] | os.O_CLOEXEC, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        if mode == "w":
            return os.fdopen(fd, "w", encoding="utf-8")
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def create_private(path: Path) -> Path:
    """``path`` as an empty file of mode 0600 (truncated if it existed); returns it."""
    open_private(path, "wb").close()
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` atomically; the file is 0600 from its first byte."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        with open_private(tmp, "w") as f:
            f.write(data)
    else:
        with open_private(tmp, "wb") as fb:
            fb.write(data)
    tmp.replace(path)
