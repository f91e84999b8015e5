"""Every relay point of a media run by size: CPU per forwarded packet, interviews per core.

``bench/shipped.py``'s own table sets each relay point against the direct aiortc pair of
the same size, so it stops where the control stops (its generator holds about 30 sessions
on one core). This one lists every relay point, whatever its size: the relay's core, its
CPU per session and per forwarded packet (relay CPU over the packets the endpoints
received in the window), the interviews one core would carry at that cost, the hop at the
wire, loss, altered payloads and the relay's garbage collections; and, per session, the
relay's CPU over the direct pair's at the largest size the control ran (a per-session
cost does not depend much on the count, and this is what the control can say there).
"""

from __future__ import annotations

from typing import Any


def control_ms_per_session(rows: list[dict[str, Any]]) -> tuple[int, list[float]] | None:
    """The direct pair's ms CPU/s per session at the largest N it ran (each run)."""
    directs = [r for r in rows if r.get("mode") == "direct" and "error" not in r]
    if not directs:
        return None
    largest = max(r["sessions"] for r in directs)
    return largest, [
        round(1000 * r["endpoint_cpu"] / largest, 2) for r in directs if r["sessions"] == largest
    ]


def points(rows: list[dict[str, Any]]) -> dict[tuple[int, str], list[dict[str, Any]]]:
    out: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        relay_point = r.get("harness") == "shipped" and r.get("mode") not in (
            None,
            "direct",
            "cycles",
        )
        if relay_point and "error" not in r and r.get("relay_cpu"):
            out.setdefault((r["sessions"], r["mode"]), []).append(r)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    control = control_ms_per_session(rows)
    mean_control = sum(control[1]) / len(control[1]) if control else None
    vs = f"relay / direct pair at {control[0]}, per session" if control else "-"
    lines = [
        "| N | mode | relay core (per run) | ms CPU/s per session | µs CPU per forwarded packet |"
        f" interviews per core | {vs} | hop p50 / p99 / max (ms) | lost | payloads not"
        " identical | collections: full / over 5 ms | generator core |",
        "|" + "---|" * 12,
    ]
    for (n, mode), runs in sorted(points(rows).items()):
        per_session = [r["relay_cpu_ms_per_session_s"] for r in runs]
        ratio = [round(x / mean_control, 3) for x in per_session] if mean_control else ["-"]
        hops = ", ".join(
            f"{r.get('hop_p50_ms')} / {r.get('hop_p99_ms')} / {r.get('hop_max_ms')}" for r in runs
        )
        gc = ", ".join(
            f"{(r.get('relay_gc') or {}).get('gen2_count', 0):.0f} /"
            f" {(r.get('relay_gc') or {}).get('over_5ms', 0):.0f}"
            for r in runs
        )
        lines.append(
            f"| {n} | {mode} | {[r['relay_cpu'] for r in runs]} | {per_session} |"
            f" {[r.get('relay_us_per_packet') for r in runs]} |"
            f" {[round(n / r['relay_cpu']) for r in runs]} | {ratio} | {hops} |"
            f" {[r['frames_missing'] + r['seq_missing'] for r in runs]} |"
            f" {[r['packets_not_identical'] for r in runs]} | {gc} |"
            f" {[r.get('endpoint_cpu') for r in runs]} |"
        )
    return "\n".join(lines)
