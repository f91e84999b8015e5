"""The renderer's pool and the multiprocessing names it relies on (real processes).

Guard: ``relay.recording.render_pool`` ends multiprocessing's fork server and resource
tracker through their private ``_stop()``. If this fails after a Python upgrade, read the
new multiprocessing.forkserver / resource_tracker and adapt ``_stop_process_helpers``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import forkserver, resource_tracker

from relay.recording.render_pool import RenderPool
from tests.support import leftovers

EXIT_WITHIN_S = 10.0


def test_the_private_names_used_still_exist() -> None:
    # Not in typeshed (private): looked up by name, as the module does.
    assert callable(getattr(forkserver._forkserver, "_stop", None))
    assert callable(getattr(resource_tracker._resource_tracker, "_stop", None))
    assert callable(os.pidfd_open)


def test_closing_the_last_pool_ends_workers_fork_server_and_resource_tracker() -> None:
    me = os.getpid()
    before = leftovers.descendants(me, leftovers.snapshot())
    pool = RenderPool(2)
    worker = pool.submit(os.getpid).result(timeout=60)
    started = leftovers.descendants(me, leftovers.snapshot()) - before
    assert worker in started and len(started) >= 3  # worker(s), fork server, tracker
    pool.close()
    processes = leftovers.snapshot()
    still = leftovers.descendants(me, processes) & started
    assert {pid for pid in still if processes[pid].state != "Z"} == set()
    # A pool opened later starts its helpers again.
    again = RenderPool(1)
    try:
        assert again.submit(os.getpid).result(timeout=60) not in started
    finally:
        again.close()


def test_a_worker_exits_when_the_process_it_watches_exits() -> None:
    watched = subprocess.Popen(["sleep", "60"])
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from relay.recording.render_pool import exit_with\n"
            "exit_with(int(sys.argv[1]))\n"
            "print('watching', flush=True)\n"
            "time.sleep(60)\n",
            str(watched.pid),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None and watcher.stdout.readline() == "watching\n"
        watched.send_signal(signal.SIGKILL)
        watched.wait()
        assert watcher.wait(timeout=EXIT_WITHIN_S) == 0
    finally:
        for proc in (watched, watcher):
            proc.kill()
            proc.wait()


def test_a_worker_killed_mid_render_breaks_that_job_only() -> None:
    # ProcessPoolExecutor marks itself broken for good when a worker dies (the OOM killer,
    # a crash in a codec): every later recording would fail until the relay restarted.
    pool = RenderPool(1)
    try:
        worker = pool.submit(os.getpid).result(timeout=60)
        dying = pool.submit(os.kill, worker, signal.SIGKILL)
        try:
            dying.result(timeout=60)
        except BrokenProcessPool:
            pass
        else:
            raise AssertionError("the killed worker's job reported success")
        replacement = pool.submit(os.getpid).result(timeout=60)
        assert replacement != worker
    finally:
        pool.close()
