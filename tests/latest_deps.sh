#!/usr/bin/env bash
# The guards of the private aiortc/aioice names, against the newest releases on PyPI:
#     bash tests/latest_deps.sh [pytest arguments...]
#
# In a virtual environment of its own (.venv-latest; LATEST_VENV=... to move it; the test
# command's .venv is not touched) it installs the project with its test extra, then
# upgrades aiortc, aioice and pylibsrtp (the libraries whose internals relay/media/
# aiortc_private.py uses) to their newest releases, past the exact pins of pyproject.toml
# (pip says so; that is the point). It prints the pinned and the installed versions, then
# runs the guards:
#   tests/unit/test_aiortc_private.py      the names, their shapes and call sites (its
#                                          version tests fail whenever a newer release
#                                          exists: the signal to follow docs/media.md,
#                                          "Upgrading aiortc or aioice")
#   tests/unit/test_media_capabilities.py  the start-up check of every name
#   tests/integration/test_media_fallback.py  a whole relay falling back when one is gone
# As root, pytest runs in a private network namespace (loopback only), as tests/run.sh does.
# Exit status: pytest's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${LATEST_VENV:-.venv-latest}
UPGRADED=(aiortc aioice pylibsrtp)
GUARDS=(
    tests/unit/test_aiortc_private.py
    tests/unit/test_media_capabilities.py
    tests/integration/test_media_fallback.py
)

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    step "create $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# pip's own notes about this machine's extra package indexes say nothing here.
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

step "pip install -e '.[test]' (the pinned versions)"
quiet_pip install -q --disable-pip-version-check -e '.[test]'
step "pip install --upgrade ${UPGRADED[*]} (the newest releases)"
# pip reports the broken pins as a conflict and installs anyway.
quiet_pip install -q --disable-pip-version-check --upgrade "${UPGRADED[@]}"

step "versions"
"$VENV/bin/python" - <<'EOF'
import tomllib
from importlib.metadata import version

with open("pyproject.toml", "rb") as f:
    requirements = tomllib.load(f)["project"]["dependencies"]
pins = dict(r.split("==", 1) for r in requirements if "==" in r)
for name in ("aiortc", "aioice", "pylibsrtp", "av"):
    installed, pin = version(name), pins.get(name)
    note = "the pin" if installed == pin else f"pinned {pin}"
    print(f"{name} {installed} ({note})")
EOF

pytest_cmd=("$VENV/bin/python" -m pytest -q -p no:cacheprovider "${GUARDS[@]}" "$@")
status=0
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null; then
    step "pytest (private network namespace: loopback only)"
    # shellcheck disable=SC2016  # $@ belongs to the inner shell
    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "${pytest_cmd[@]}" || status=$?
else
    step "pytest"
    "${pytest_cmd[@]}" || status=$?
fi
exit "$status"
