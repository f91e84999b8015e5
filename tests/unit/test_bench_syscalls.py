"""bench/syscall_counts.py: reading ``perf stat -x,`` output (pure parsing), and the
``perf record`` command it runs."""

from __future__ import annotations

from pathlib import Path

from bench import syscall_counts

# The shape perf 6.x writes with -x, (value, unit, event, run time, run share, ...).
PERF_STAT = """# started on Sun Dec  6 00:42:21 2026

30850,,syscalls:sys_enter_recvmmsg,10011802553,100.00,,
30026,,syscalls:sys_enter_sendmmsg,10011802553,100.00,,
17194,,syscalls:sys_enter_epoll_wait,10011802553,100.00,,
<not counted>,,syscalls:sys_enter_epoll_pwait,0,0.00,,
8396,,syscalls:sys_enter_epoll_ctl,10011802553,100.00,,
104449,,raw_syscalls:sys_enter,10011802553,100.00,,
8333,,context-switches,10011802553,100.00,,
"""


def test_counts_are_read_by_event_and_uncounted_ones_left_out() -> None:
    assert syscall_counts.parse(PERF_STAT) == {
        "recvmmsg": 30850,
        "sendmmsg": 30026,
        "epoll_wait": 17194,
        "epoll_ctl": 8396,
        "all": 104449,
        "context_switches": 8333,
    }


def test_every_event_asked_for_is_a_tracepoint_or_a_counter_parse_knows() -> None:
    lines = "\n".join(
        f"{i + 1},,{event},1,100.00,," for i, event in enumerate(syscall_counts.events())
    )
    parsed = syscall_counts.parse(lines)
    assert set(parsed) == {*syscall_counts.SYSCALLS, "all", "context_switches"}


def test_a_recording_samples_every_thread_of_the_process_with_calls_into_the_file(
    tmp_path: Path,
) -> None:
    out = tmp_path / "relay.with-audio.data"
    command = syscall_counts.record_command(4242, 10.0, out)
    assert command[:2] == ["perf", "record"]
    assert command[command.index("-p") + 1] == "4242"  # a process: all its threads
    assert command[command.index("-o") + 1] == str(out)
    assert "-g" in command  # call graphs: who called the kernel and libsrtp
    assert command[command.index("-F") + 1] == str(syscall_counts.RECORD_HZ)
    assert command[command.index("--") + 1 :] == ["sleep", "10"]
