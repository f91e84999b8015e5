#!/usr/bin/env bash
# The compiled forwarding loop under AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   bash tests/fastloop_asan.sh [pytest arguments...]
#
# Builds relay/media/_fastloop.c with -fsanitize=address,undefined into a copy of the tree
# (the regular build stays as it is), then runs the media tests on the compiled path there
# with libasan preloaded into the interpreter and Python's allocator switched to malloc,
# so every heap object (the loop's buffers and the Route objects alike) is checked. Any
# report fails the run (halt_on_error). Default tests: the hostile datagrams, the fast
# path end to end, the media sockets, the endpoints (receive times read from each
# datagram's control message), the far ends' SRTCP read in the loop (hostile too), the
# route syncs spread over pumps and the forwarder thread. Needs the test venv (bash
# tests/run.sh once) and gcc's libasan; runs in a private network namespace when root, as
# tests/run.sh does.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
python=$root/.venv/bin/python
[ -x "$python" ] || { echo "error: run bash tests/run.sh once first (it makes .venv)" >&2; exit 2; }
asan=$(gcc -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "error: gcc's libasan is missing (apt-get install libasan8)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r relay tests bench pyproject.toml setup.py "$work/"
find "$work" -name '*.so' -delete
cd "$work"
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -O1 -g" \
    LDFLAGS="-fsanitize=address,undefined" \
    "$python" setup.py -q build_ext --inplace >build.log 2>&1 || { cat build.log; exit 1; }
ls relay/media/_fastloop*.so >/dev/null

if [ $# -eq 0 ]; then
    set -- tests/unit/test_fastpath_hostile.py tests/unit/test_media_fastpath.py \
        tests/unit/test_media_udp.py tests/unit/test_fastloop_endpoints.py \
        tests/unit/test_fastloop_rtcp.py tests/unit/test_fastloop_sync.py \
        tests/unit/test_fastloop_thread.py
fi
export LD_PRELOAD=$asan PYTHONMALLOC=malloc
# Leaks: CPython and the libraries it loads keep memory until exit on purpose. Reports go
# to files (pytest captures stderr, and a report ends the process before it is shown).
reports=$work/sanitizer
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:alloc_dealloc_mismatch=0:log_path=$reports
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$reports
cmd=("$python" -m pytest -q -p no:cacheprovider --media-paths=compiled "$@")
# The tree under test is this copy: its directory comes first on sys.path (pytest's
# pythonpath), before the editable install's finder.
"$python" -c 'import relay.media._fastloop as m, sys; sys.exit(not m.__file__.startswith(sys.argv[1]))' "$work"
status=0
if [ "$(id -u)" -eq 0 ]; then
    # shellcheck disable=SC2016
    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "${cmd[@]}" || status=$?
else
    "${cmd[@]}" || status=$?
fi
if compgen -G "$reports*" >/dev/null; then
    cat "$reports"*
    echo "sanitizer reports above" >&2
    exit 1
fi
exit "$status"
