"""A child process of the relay that must not outlive it (the workers of ``relay serve
--workers N``, the built-in simulator): ``die_with_parent``, called first thing in the child.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is delivered even when the parent
is killed with SIGKILL, which no clean-up code of the parent survives. The kernel sends it
when the *thread* that forked the child exits, so a parent must start such children from a
thread that lives as long as it does (its event loop's). A parent that died between the
fork and the call is not covered by the signal: the child has been reparented by then,
which its parent pid tells, so the child is told the pid it expects.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger("relay.process_lifetime")

_PR_SET_PDEATHSIG = 1


class ParentGone(Exception):
    """The process that started this one has already exited."""


def die_with_parent(expected_parent: int | None, sig: int = signal.SIGTERM) -> None:
    """Receive ``sig`` when the parent dies (any way it dies); raise ``ParentGone`` when it
    is already gone (``expected_parent`` is no longer this process's parent)."""
    if sys.platform.startswith("linux"):
        # dlopen(NULL): the C library already loaded into the process (find_library would
        # search the disk by running ldconfig).
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, sig) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if expected_parent is not None and os.getppid() != expected_parent:
        raise ParentGone(f"the parent process (pid {expected_parent}) is gone")


# ---------------------------------------------------------------------- stopping
# What stops `relay serve` (and the supervisor of `--workers N`) besides Ctrl-C. SIGHUP
# too: the relay has no configuration to reload, and a hang-up (a closed terminal or SSH
# session, an operator's habit of `kill -HUP` for a reload) must not kill it without a
# drain, so it does what SIGTERM does.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StoppedDuringStartUp(Exception):
    """A stop signal arrived before the start-up was done: what had started was stopped.
    ``exit_status`` is the shell's for the signal (128 + its number: 143, 129), as 130 is
    for Ctrl-C then."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_status = 128 + signum
        super().__init__(f"stopped by {self.name} during start-up")


class StopSignals:
    """SIGTERM and SIGHUP for a starting, then running, server; create it first thing in
    the server's main task.

    Until ``started()``, a stop signal cancels that task: the start-up's own clean-up runs
    (the embedded PostgreSQL, the simulator, whatever had started is stopped), and
    ``raise_if_stopped`` turns the cancellation into ``StoppedDuringStartUp``. Without this
    the signal's default action would end the process at once, leaving its children (the
    embedded ``postgres``) behind. Once started, a stop signal (and SIGINT) sets ``stop``:
    the server drains. A SIGHUP ignored when the process started (``nohup``) stays ignored.
    """

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._received: int | None = None
        self._started = False
        for sig in STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, signum: int) -> None:
        if self._started:
            self.stop.set()
        elif self._received is None and self._task is not None:
            self._received = signum
            self._task.cancel()

    def started(self) -> None:
        """From now on a stop signal, or SIGINT, asks for a drain (``stop``)."""
        self._started = True
        self._loop.add_signal_handler(signal.SIGINT, self.stop.set)
        if self._received is not None:
            # A signal during start-up whose cancellation was swallowed on the way (3.11's
            # asyncio.wait_for can drop one): it still asks for the drain.
            self.stop.set()

    def raise_if_stopped(self) -> None:
        """In an ``except CancelledError``: raise ``StoppedDuringStartUp`` when a stop
        signal caused the cancellation (else the caller re-raises it)."""
        if self._received is not None:
            raise StoppedDuringStartUp(self._received)
