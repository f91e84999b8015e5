"""The renderer's worker processes: started on first use, ended with the relay, never after it.

Finalisation (relay.recording.render) runs in a ``ProcessPoolExecutor`` whose workers are
forked from multiprocessing's fork server: a clean process started once with the renderer
(PyAV, numpy) imported, rather than from the relay, which runs threads (aiortc, the
recording writer) and an event loop that a plain fork would copy mid-flight.

multiprocessing does not tie these processes to the relay's life, so this module does:

* **A worker exits when the relay does.** A worker is a child of the fork server, not of
  the relay, and holds both ends of its task queue's pipe, so it never sees end-of-file
  when the relay dies: a relay killed with SIGKILL left its worker waiting forever, and
  with it the fork server and multiprocessing's resource tracker, which stay up while any
  worker holds their pipes (three orphans, reparented to PID 1). Each worker therefore
  watches the relay through a pidfd (readable once the process has exited) and exits with
  it; the fork server and the resource tracker then see their last pipe close and exit.
  (``PR_SET_PDEATHSIG`` cannot do this: the worker's parent is the fork server, which is
  the one that would stay.)
* **Closing ends them all.** ``close()`` shuts the pool down (waiting for its workers);
  the fork server and the resource tracker are process-wide singletons that
  multiprocessing otherwise keeps until the interpreter exits, so the last pool of the
  process to close stops both (see ``_stop_process_helpers``). A later pool starts them
  again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import forkserver, resource_tracker
from typing import Any, TypeVar

log = logging.getLogger("relay.recording")

T = TypeVar("T")

RENDER_MODULE = "relay.recording.render"
# Without pidfds (not Linux, or a kernel before 5.3), how often a worker checks the relay.
POLL_INTERVAL_S = 1.0

# Pools of this process still open; the last one to close stops the shared helpers.
_lock = threading.Lock()
_open_pools = 0


class RenderPool:
    """Up to ``workers`` render processes, created when first needed. Blocking methods
    (they start and wait for processes): call them off the event loop."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        global _open_pools
        with _lock:
            if self._closed:
                raise RuntimeError("the relay is shutting down")
            if self._executor is None:
                self._executor = self._new_executor()
                _open_pools += 1
            executor = self._executor
            try:
                return executor.submit(fn, *args)
            except BrokenProcessPool:
                # A worker died (killed, or crashed in a codec): the executor failed the
                # jobs it held and refuses every later one, for good. Replace it so that
                # only those jobs are lost, not every recording until a restart.
                log.warning("a render worker died; starting new render workers")
                self._executor = self._new_executor()
                replacement = self._executor
        # The broken executor's workers are gone already; this reaps what is left of it.
        executor.shutdown(wait=True, cancel_futures=True)
        return replacement.submit(fn, *args)

    def _new_executor(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([RENDER_MODULE])
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=context,
            initializer=exit_with,
            initargs=(os.getpid(),),
        )

    def close(self) -> None:
        """Cancel what has not started, wait for what has, end the workers; the last pool
        of the process also ends the fork server and the resource tracker."""
        global _open_pools
        with _lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is None:
            return
        executor.shutdown(wait=True, cancel_futures=True)
        with _lock:
            _open_pools -= 1
            if _open_pools == 0:
                _stop_process_helpers()


def exit_with(pid: int) -> None:
    """Pool initializer, run in each worker: exit as soon as process ``pid`` (the relay)
    has exited, whatever the worker is doing (module docstring)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # already gone while this worker was being forked
        os._exit(0)
    except (AttributeError, OSError):  # no pidfds here: poll instead
        threading.Thread(
            target=_poll_then_exit, args=(pid,), name="relay-watch", daemon=True
        ).start()
        return
    threading.Thread(target=_wait_then_exit, args=(fd,), name="relay-watch", daemon=True).start()


def _wait_then_exit(pidfd: int) -> None:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while not poller.poll():
        pass
    os._exit(0)


def _poll_then_exit(pid: int) -> None:
    while True:
        time.sleep(POLL_INTERVAL_S)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # alive (another user's process cannot be ours, but live)
            pass


def _stop_process_helpers() -> None:
    """End multiprocessing's fork server and resource tracker of this process.

    Private API, on purpose: both are module-level singletons with a ``_stop()`` (closes
    the pipe they wait on, then reaps them) that CPython's own tests use; there is no
    public way to end them before the interpreter exits. Both are started again on demand
    by the next pool. If a future Python drops either name, the process is left to end
    with the interpreter, as before, and this says so (tests/unit/test_render_pool.py
    guards the names on the supported Python).
    """
    for owner, name in (
        (getattr(forkserver, "_forkserver", None), "fork server"),
        (getattr(resource_tracker, "_resource_tracker", None), "resource tracker"),
    ):
        stop = getattr(owner, "_stop", None)
        if stop is None:
            log.warning("cannot stop multiprocessing's %s (no _stop on this Python)", name)
            continue
        with contextlib.suppress(ChildProcessError):  # already reaped
            stop()
