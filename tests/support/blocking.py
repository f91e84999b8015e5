"""The guard against blocking calls on the event loop (blockbuster), configured once.

While active, a blocking call (``time.sleep``, file or blocking-socket I/O, ``os.stat``,
waiting on a thread lock, ...) made on a thread that runs an event loop raises
``BlockingError`` when the call stack passes through the relay package or through
``tests.support``: the relay must do such work off the loop (``asyncio.to_thread``), and so
must tests that drive the test servers (their blocking methods have ``a*`` async twins).

Not checked: library internals with no relay frame on the stack, and the test code's own
calls (a test may ``mkdir`` or read a small file in its ``tmp_path``; failing it for that
would only add noise). A few library functions that block briefly and boundedly, below
relay code, are allowed (see ``_ALLOWED``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from blockbuster import BlockBuster

# (file name suffix, function names): blocking anywhere below these frames is allowed.
_ALLOWED: list[tuple[str, set[str]]] = [
    # asyncpg reads ~/.pgpass (and stats ~/.postgresql/*) on every connect: a few stats
    # and at most one small file read; the library offers no async alternative.
    ("asyncpg/connect_utils.py", {"_parse_connect_dsn_and_args", "_read_password_file"}),
    # redis-py 8 looks its own version up with importlib.metadata (stats of sys.path
    # entries) each time a connection object is made; bounded and library-internal.
    ("redis/utils.py", {"get_lib_version"}),
]

_buster: BlockBuster | None = None


def _configured() -> BlockBuster:
    global _buster
    if _buster is None:
        buster = BlockBuster(scanned_modules=["relay", "tests.support"])
        for function in buster.functions.values():
            for filename, names in _ALLOWED:
                function.can_block_in(filename, names)
        _buster = buster
    return _buster


@contextmanager
def blocking_call_guard() -> Iterator[None]:
    """Fail blocking calls made on a running event loop by relay or test code."""
    buster = _configured()
    buster.activate()
    try:
        yield
    finally:
        buster.deactivate()
