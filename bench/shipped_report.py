"""The shipped-relay benchmark's tables: each relay point against the direct control of
the same size and repeat (CPU ratios, per-packet ratios, the hop, loss, first audio), every
row as measured, and the time to first reply audio step by step."""

from __future__ import annotations

from typing import Any

from bench.relay_process import RELAY_MODES

GENERATOR_SATURATED = 0.85


def first_audio_table(rows: list[dict[str, Any]]) -> str:
    """Per mode and run: p50 / p90 of each step, ms since the exchange request."""
    keys = sorted({k[:-4] for r in rows for k in r if k.endswith("_p50")})
    lines = [
        "| mode | run | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 2),
    ]
    for r in rows:
        cells = [f"{r.get(k + '_p50', '-')} / {r.get(k + '_p90', '-')}" for k in keys]
        lines.append(f"| {r['mode']} | {r.get('run')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_point(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    points: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if "error" not in row:
            points.setdefault((row["mode"], row["sessions"]), []).append(row)
    return points


def cpu_ratio(relay: dict[str, Any], direct: dict[str, Any]) -> float | None:
    """Relay CPU per bridged session over the direct pair's CPU per session.

    The direct control's cost is the generator's CPU for N browser + N upstream
    endpoints talking to each other: what a pair of aiortc peers costs.
    """
    direct_cpu = direct.get("endpoint_cpu")
    relay_cpu = relay.get("relay_cpu")
    if not direct_cpu or relay_cpu is None:
        return None
    return round(float(relay_cpu) / float(direct_cpu), 3)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per N and relay mode: CPU ratios against the direct control, per run pairing."""
    points = by_point(rows)
    out: list[dict[str, Any]] = []
    for n in sorted({r["sessions"] for r in rows}):
        directs = points.get(("direct", n), [])
        for mode in RELAY_MODES:
            runs = points.get((mode, n), [])
            if not runs or not directs:
                continue
            # Pair each relay run with the direct run of the same repeat.
            ratios = [
                cpu_ratio(r, d) for r, d in zip(runs, directs, strict=False) if cpu_ratio(r, d)
            ]
            base = sorted(d["latency_p50_ms"] for d in directs if d.get("latency_p50_ms"))
            median_direct = base[len(base) // 2] if base else None
            rests = sorted(
                d["first_audio_rest_ms_p50"] for d in directs if "first_audio_rest_ms_p50" in d
            )
            direct_rest = rests[len(rests) // 2] if rests else None
            added_p99 = [
                round(r["latency_p99_ms"] - median_direct, 2)
                for r in runs
                if r.get("latency_p99_ms") is not None and median_direct is not None
            ]
            # The direct control's own tail is the generator's and the machine's jitter
            # (both runs have it): the relay's tail over the control's tail, the quietest
            # control run's (one disturbed control window must not hide the relay's tail).
            tails = sorted(d["latency_p99_ms"] for d in directs if d.get("latency_p99_ms"))
            direct_p99 = tails[0] if tails else None
            added_p99_over_tail = [
                round(r["latency_p99_ms"] - direct_p99, 2)
                for r in runs
                if r.get("latency_p99_ms") is not None and direct_p99 is not None
            ]
            out.append(
                {
                    "sessions": n,
                    "mode": mode,
                    "cpu_ratio_vs_direct": ratios,
                    # Per packet carried: relay µs over the direct pair's µs.
                    "per_packet_ratio_vs_direct": [
                        round(r["relay_us_per_packet"] / d["endpoint_us_per_packet"], 3)
                        for r, d in zip(runs, directs, strict=False)
                        if r.get("relay_us_per_packet") and d.get("endpoint_us_per_packet")
                    ],
                    # The same endpoints, measured in the same window as the relay.
                    "cpu_ratio_vs_generator": [
                        round(r["relay_cpu"] / r["endpoint_cpu"], 3) for r in runs
                    ],
                    "relay_ms_per_session": [r["relay_cpu_ms_per_session_s"] for r in runs],
                    "direct_ms_per_session": [
                        round(1000 * d["endpoint_cpu"] / n, 2) for d in directs
                    ],
                    # The relay's own hop, from kernel timestamps at the wire (bench/wire.py):
                    # neither endpoint's scheduling is in it.
                    "hop_ms": [
                        (r["hop_p50_ms"], r["hop_p99_ms"], r["hop_max_ms"])
                        for r in runs
                        if r.get("hop_p99_ms") is not None
                    ],
                    "wire_drops": [r.get("wire_kernel_drops") for r in runs],
                    # The most the hypervisor took from either core in the window (ms/s).
                    "steal_ms_per_s": [max(r.get("steal_ms_per_s") or [0.0]) for r in runs],
                    # End to end (the generator's scheduling included) over the control.
                    "added_p99_ms": added_p99,
                    "added_p99_over_direct_p99_ms": added_p99_over_tail,
                    # Exchange → first upstream audio at the browser, minus the upstream's
                    # own share, minus the same for the direct control (the browser leg).
                    "first_audio_relay_share_ms": [
                        round(r["first_audio_rest_ms_p50"] - direct_rest, 2)
                        for r in runs
                        if r.get("first_audio_rest_ms_p50") is not None and direct_rest is not None
                    ],
                    "lost": [r["frames_missing"] + r["seq_missing"] for r in runs],
                    "not_identical": [r["packets_not_identical"] for r in runs],
                    # Below 0.99, some endpoint fell behind: the point did less work.
                    "received_min": min(r.get("received_ratio_min", 0) for r in runs + directs),
                    "sessions_live_at_end": [r.get("sessions_live_at_end") for r in runs],
                    "generator_saturated": any(
                        r.get("endpoint_cpu", 0) > GENERATOR_SATURATED for r in runs + directs
                    ),
                }
            )
    return out


def gc_cell(row: dict[str, Any]) -> str:
    gc = row.get("relay_gc")
    if not gc:
        return "-"
    return f"{gc.get('gen2_count', 0):.0f} / {gc.get('over_5ms', 0):.0f}"


def hop_cell(hops: list[tuple[float, float, float]]) -> str:
    return ", ".join(f"{p50} / {p99} / {top}" for p50, p99, top in hops) or "-"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | mode | relay CPU / direct pair CPU (per run) |"
        " per packet (per run) |"
        " relay CPU / generator CPU, same window (per run) | relay ms CPU/s per session |"
        " direct pair ms CPU/s per session |"
        " relay hop at the wire p50 / p99 / max (ms, per run) |"
        " steal in the window (ms/s, per run) | end to end p99 over the direct median (ms) |"
        " lost packets | payloads not identical | first audio, relay's share p50 (ms) |"
        " received, min ratio | relay sessions live at the end | generator saturated |",
        "|" + "---|" * 16,
    ]
    for s in summary(rows):
        lines.append(
            f"| {s['sessions']} | {s['mode']} | {s['cpu_ratio_vs_direct']} |"
            f" {s['per_packet_ratio_vs_direct']} | {s['cpu_ratio_vs_generator']} |"
            f" {s['relay_ms_per_session']} | {s['direct_ms_per_session']} |"
            f" {hop_cell(s['hop_ms'])} | {s['steal_ms_per_s']} | {s['added_p99_ms']} |"
            f" {s['lost']} | {s['not_identical']} |"
            f" {s['first_audio_relay_share_ms']} | {s['received_min']} |"
            f" {s['sessions_live_at_end']} |"
            f" {'YES' if s['generator_saturated'] else 'no'} |"
        )
    lines += [
        "",
        "| mode | N | run | relay core | generator core |"
        " generator's packets late p50 / p99 (ms) | other processes (cores) |"
        " received (min ratio) | latency p50 / p99 (ms, end to end) |"
        " relay hop p50 / p99 / p99.9 / max (ms, wire) |"
        " steal, relay's / generator's core (ms/s) | events |"
        " first audio p50: total / upstream / rest (ms) | relay RSS per session (MB) |"
        " relay collections: full / any over 5 ms |"
        " relay datagrams per wake-up (batch window, ms) | error |",
        "|" + "---|" * 17,
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['sessions']} | {r.get('run')} | {r.get('relay_cpu', '-')} |"
            f" {r.get('endpoint_cpu')} |"
            f" {r.get('generator_send_late_p50_ms', '-')} /"
            f" {r.get('generator_send_late_p99_ms', '-')} |"
            f" {r.get('others_cpu')} |"
            f" {r.get('received_ratio_min')} |"
            f" {r.get('latency_p50_ms')} / {r.get('latency_p99_ms')} |"
            f" {r.get('hop_p50_ms', '-')} / {r.get('hop_p99_ms', '-')} /"
            f" {r.get('hop_p999_ms', '-')} / {r.get('hop_max_ms', '-')} |"
            f" {' / '.join(str(x) for x in r.get('steal_ms_per_s', [])) or '-'} |"
            f" {r.get('sessions_with_events', '-')} |"
            f" {r.get('first_audio_total_ms_p50')} / {r.get('first_audio_upstream_ms_p50')} /"
            f" {r.get('first_audio_rest_ms_p50')} |"
            f" {r.get('relay_rss_per_session_mb', '-')} | {gc_cell(r)} |"
            f" {r.get('relay_datagrams_per_wakeup', '-')}"
            f" ({r.get('relay_receive_batch_ms', '-')}) | {r.get('error', '')} |"
        )
    return "\n".join(lines)
