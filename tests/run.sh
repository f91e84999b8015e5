#!/usr/bin/env bash
# The test command: bash tests/run.sh [pytest arguments...]
#
# From a clean clone it creates .venv (Python >= 3.11) and installs the project with its
# test extra (again whenever pyproject.toml, setup.py or the compiled loop's C source
# change; the install compiles it, which needs a C compiler and Python's headers: without
# them it installs anyway and the media tests' compiled runs fail, see
# --media-paths in tests/conftest.py), then runs ruff check, ruff format
# --check, mypy and pytest. PostgreSQL and Redis come from wheels; the browser tests
# (tests/e2e) need Debian's chromium, and the TURN tests Debian's coturn (turnserver,
# turnutils_uclient), both installed with apt-get as root when missing.
# As root, pytest runs in a private network namespace that has only loopback (unshare -n),
# installing util-linux/iproute2 with apt-get if unshare/ip are missing.
#
# Arguments go to pytest: bash tests/run.sh tests/unit -k config
# Exit status: pytest's when it fails (including 5, "no tests collected"); otherwise 1 if a
# static check failed, else 0.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv

step() { printf '\n==> %s\n' "$*"; }

is_root() { [ "$(id -u)" -eq 0 ]; }

apt_install() {
    step "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "error: $PYTHON is missing or older than 3.11 (set PYTHON=...)" >&2
            exit 2
        fi
        step "create $VENV"
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            # Debian ships venv's ensurepip separately.
            if is_root && command -v apt-get >/dev/null; then
                rm -rf "$VENV"
                apt_install python3-venv
                "$PYTHON" -m venv "$VENV"
            else
                echo "error: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)" >&2
                exit 2
            fi
        fi
    fi
    local stamp="$VENV/.test-install-stamp" wanted
    # setup.py and the C source too: the install compiles relay/media/_fastloop.c.
    wanted=$(cat pyproject.toml setup.py relay/media/_fastloop.c | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        step "pip install -e '.[test]'"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
        echo "$wanted" >"$stamp"
    fi
}

ensure_netns_tools() {
    local missing=()
    command -v unshare >/dev/null || missing+=(util-linux)
    command -v ip >/dev/null || missing+=(iproute2)
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# tests/e2e drives Debian's Chromium through Playwright (never a browser Playwright downloads).
ensure_chromium() {
    if [ ! -x /usr/bin/chromium ]; then
        if is_root && command -v apt-get >/dev/null; then
            apt_install chromium
        else
            echo "warning: /usr/bin/chromium is missing; tests/e2e will fail" \
                "(on Debian: apt-get install chromium)" >&2
        fi
    fi
}

# The install compiles the forwarding loop (relay/media/_fastloop.c): a C compiler and the
# venv Python's headers. Without them the install still succeeds (the relay forwards in
# Python), but the media tests' compiled runs fail, so they are installed when missing.
ensure_c_toolchain() {
    local include
    include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    if command -v "${CC:-cc}" >/dev/null && [ -f "$include/Python.h" ]; then
        return
    fi
    if is_root && command -v apt-get >/dev/null; then
        local packages=(gcc libc6-dev)
        [ -f "$include/Python.h" ] || packages+=(python3-dev)
        apt_install "${packages[@]}"
    else
        echo "warning: no C compiler or no $include/Python.h; relay.media._fastloop will not" \
            "be built and the compiled media tests will fail (on Debian: apt-get install gcc" \
            "python3-dev)" >&2
    fi
}

# The TURN tests start Debian's coturn (turnserver + turnutils_uclient) on loopback.
ensure_coturn() {
    if [ ! -x /usr/bin/turnserver ] || [ ! -x /usr/bin/turnutils_uclient ]; then
        if is_root && command -v apt-get >/dev/null; then
            apt_install coturn
        else
            echo "warning: coturn is missing; the TURN tests will fail" \
                "(on Debian: apt-get install coturn)" >&2
        fi
    fi
}

ensure_c_toolchain
ensure_venv
ensure_chromium
ensure_coturn

failed_checks=()
step "ruff check"
"$VENV/bin/ruff" check . || failed_checks+=("ruff check")
step "ruff format --check"
"$VENV/bin/ruff" format --check . || failed_checks+=("ruff format")
step "mypy"
"$VENV/bin/mypy" || failed_checks+=("mypy")

pytest_cmd=("$VENV/bin/python" -m pytest -q --durations=10 "$@")
status=0
if is_root; then
    ensure_netns_tools
    step "pytest (private network namespace: loopback only)"
    # shellcheck disable=SC2016  # $@ belongs to the inner shell
    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "${pytest_cmd[@]}" || status=$?
else
    step "pytest (not root: no private network namespace; WebRTC still uses 127.0.0.1 only)"
    "${pytest_cmd[@]}" || status=$?
fi

if [ ${#failed_checks[@]} -gt 0 ]; then
    (IFS=,; printf "\nstatic checks failed: %s\n" "${failed_checks[*]}" >&2)
fi
if [ "$status" -ne 0 ]; then
    printf '\npytest failed (exit status %s)\n' "$status" >&2
    exit "$status"
fi
[ ${#failed_checks[@]} -eq 0 ]
