"""SRTP per packet with the libsrtp pylibsrtp bundles next to Debian's libsrtp2.

Run from the repository root (no network needed):

    .venv/bin/python -m bench.srtp_libraries [--callgrind]

The compiled forwarding loop (relay/media/_fastloop.c) calls a libsrtp for every packet
twice (unprotect, protect). Two were candidates: the one pylibsrtp's wheel links in
(libsrtp 2.x with OpenSSL, statically), whose contexts aiortc's sessions already are, and
Debian's ``libsrtp2`` package (``apt-get install libsrtp2-1``; built with NSS for its
crypto). This measures both doing the same work: ``bench/srtp_cost.c``, built here with
``cc`` into a small library, takes each one's functions by address (ctypes), creates an
AES-256-GCM session pair (what aiortc negotiates first) and protects, then unprotects,
``--packets`` packets of an 80-byte Opus payload behind a 20-byte header, timed with the
thread's CPU clock; the libraries alternate over ``--rounds``. With ``--callgrind`` each
loop also runs under ``valgrind --tool=callgrind`` and its instructions are counted
(steadier than seconds on a virtual machine whose speed varies between runs).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pylibsrtp import _binding

SOURCE = Path(__file__).resolve().parent / "srtp_cost.c"
DEBIAN_LIBSRTP = "/usr/lib/x86_64-linux-gnu/libsrtp2.so.1"
PAYLOAD_BYTES = 80
FUNCTIONS = (
    "srtp_init",
    "srtp_create",
    "srtp_protect",
    "srtp_unprotect",
    "srtp_crypto_policy_set_aes_gcm_256_16_auth",
    "srtp_dealloc",
)


def libraries() -> dict[str, str]:
    """Name → path of each libsrtp found on this machine."""
    found = {"pylibsrtp (bundled)": str(_binding.__file__)}
    debian = ctypes.util.find_library("srtp2") and DEBIAN_LIBSRTP
    if debian and os.path.exists(debian):
        found["Debian libsrtp2"] = debian
    return found


def build(directory: Path) -> Path:
    out = directory / "srtp_cost.so"
    subprocess.run(
        ["cc", "-O2", "-g", "-shared", "-fPIC", str(SOURCE), "-o", str(out)],
        check=True,
        timeout=120,
    )
    return out


def addresses(path: str) -> tuple[list[int], str]:
    library = ctypes.CDLL(path)
    found = [ctypes.cast(getattr(library, name), ctypes.c_void_p).value or 0 for name in FUNCTIONS]
    library.srtp_get_version_string.restype = ctypes.c_char_p
    version: bytes = library.srtp_get_version_string()
    return found, version.decode()


def measure_once(cost: ctypes.CDLL, path: str, packets: int) -> tuple[float, float]:
    """ns of CPU per protect and per unprotect with the library at ``path``."""
    functions, _ = addresses(path)
    protect_ns, unprotect_ns = ctypes.c_double(), ctypes.c_double()
    rc = cost.measure(
        *(ctypes.c_void_p(f) for f in functions),
        ctypes.c_int(packets),
        ctypes.c_int(PAYLOAD_BYTES),
        ctypes.byref(protect_ns),
        ctypes.byref(unprotect_ns),
    )
    if rc != 0:
        raise RuntimeError(f"{path}: srtp_cost.measure failed ({rc})")
    return round(protect_ns.value, 1), round(unprotect_ns.value, 1)


def instructions(cost_path: Path, library: str, packets: int, function: str) -> float:
    """Instructions per packet of ``function`` (run_protect / run_unprotect), callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--toggle-collect={function}",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.srtp_libraries",
                "--child",
                json.dumps({"cost": str(cost_path), "library": library, "packets": packets}),
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return round(int(line.split()[1]) / packets, 1)
    raise RuntimeError("callgrind wrote no totals")


def measure(packets: int, rounds: int, callgrind: bool) -> dict[str, Any]:
    found = libraries()
    with tempfile.TemporaryDirectory() as tmp:
        cost_path = build(Path(tmp))
        cost = ctypes.CDLL(str(cost_path))
        results: dict[str, dict[str, Any]] = {
            name: {
                "path": path,
                "version": addresses(path)[1],
                "protect_ns": [],
                "unprotect_ns": [],
            }
            for name, path in found.items()
        }
        for _ in range(rounds):
            for name, path in found.items():
                protect_ns, unprotect_ns = measure_once(cost, path, packets)
                results[name]["protect_ns"].append(protect_ns)
                results[name]["unprotect_ns"].append(unprotect_ns)
        if callgrind:
            for name, path in found.items():
                for function, key in (
                    ("run_protect", "protect_ir"),
                    ("run_unprotect", "unprotect_ir"),
                ):
                    results[name][key] = instructions(
                        cost_path, path, min(packets, 20_000), function
                    )
    return {
        "harness": "srtp_libraries",
        "profile": "AEAD_AES_256_GCM",
        "payload_bytes": PAYLOAD_BYTES,
        "packets_per_round": packets,
        "rounds": rounds,
        "libraries": results,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| libsrtp (AES-256-GCM, 80-byte payload) | version | ns of CPU per protect (per round)"
        " | per unprotect | instructions per protect / unprotect (callgrind) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("harness") != "srtp_libraries":
            continue
        for name, r in row["libraries"].items():
            ir = (
                f"{r['protect_ir']} / {r['unprotect_ir']}"
                if "protect_ir" in r and "unprotect_ir" in r
                else "-"
            )
            lines.append(
                f"| {name} | {r['version']} | {r['protect_ns']} | {r['unprotect_ns']} | {ir} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.srtp_libraries", description=__doc__)
    parser.add_argument("--packets", type=int, default=200_000, help="per round (1000..1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="1..10")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # under callgrind: one library's loops, nothing else measured
        spec = json.loads(args.child)
        measure_once(ctypes.CDLL(spec["cost"]), spec["library"], spec["packets"])
        return
    if not 1000 <= args.packets <= 1_000_000 or not 1 <= args.rounds <= 10:
        parser.error("keep it bounded: --packets 1000..1000000, --rounds 1..10")
    from bench.run import report_row  # (bench.run pre-encodes audio at import)

    row = measure(args.packets, args.rounds, args.callgrind)
    report_row("srtp-libraries", row, table([row]))


if __name__ == "__main__":
    main()
