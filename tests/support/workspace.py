"""Where the test session keeps its servers' files.

As root, PostgreSQL runs as an unprivileged user that must be able to enter every directory
on the way to its data; pytest's temporary root (``/tmp/pytest-of-root``) is 0700, so the
session's servers live in their own 0711 directory in a system temporary directory
instead (tmpfs when there is one), removed when the session ends. A session that was
killed cannot remove its own: the next one removes it, after stopping any PostgreSQL
still running from it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

from relay.db.embedded_pg import OsUser, unreachable_dirs

PREFIX = "relay-tests-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-")
# tmpfs first: initdb and copying a cluster (a thousand small files) are several times
# faster there than on a disk file system.
_CANDIDATES = ("/dev/shm", "/tmp", "/var/tmp")


def make_workspace(user: OsUser | None) -> Path:
    """A fresh directory that ``user`` (None: this process's user) can enter."""
    for candidate in map(Path, _CANDIDATES):
        if not candidate.is_dir() or not os.access(candidate, os.W_OK | os.X_OK):
            continue
        if user is not None and unreachable_dirs(candidate, user):
            continue
        remove_stale_workspaces(candidate)
        workspace = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=candidate))
        workspace.chmod(0o711)  # enter, not list
        return workspace
    raise RuntimeError(f"none of {_CANDIDATES} is a usable temporary directory")


def remove_workspace(workspace: Path) -> None:
    stop_postgres_under(workspace)
    shutil.rmtree(workspace, ignore_errors=True)


def remove_stale_workspaces(parent: Path) -> None:
    """Remove the workspaces of test sessions that died (their pid is gone)."""
    for entry in parent.glob(f"{PREFIX}*"):
        match = _NAME.match(entry.name)
        if match and entry.lstat().st_uid == os.geteuid() and not _alive(int(match[1])):
            remove_workspace(entry)


def stop_postgres_under(directory: Path) -> None:
    """SIGQUIT every postgres still running on a data directory below ``directory``."""
    for pidfile in directory.glob("**/postmaster.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if os.fsencode(pidfile.parent) in cmdline.split(b"\0"):
                os.kill(pid, signal.SIGQUIT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
