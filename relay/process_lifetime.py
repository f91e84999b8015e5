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
