# The relay as a container (docs/deploy.md). Media terminates in this process, so each
# replica's UDP port range must be reachable by candidates: host networking (as compose.yaml
# runs it), published 1:1 with ice.public_address, or a TURN service in front.
#
#   docker build -t interview-relay .
#   docker run --network host -e OPENAI_API_KEY=sk-... -e DATABASE_URL=postgresql://... \
#       -e RELAY_OPERATOR_TOKEN=... -e RELAY__ICE__PUBLIC_ADDRESS=203.0.113.10 \
#       -v relay-data:/data interview-relay
#
# (No "# syntax=" line: it makes BuildKit fetch a frontend image, which fails where only a
# registry mirror or no registry is reachable; nothing here needs a newer syntax.)

# One pinned base for both stages (a patch-level tag; pin a digest in your registry mirror).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------- build: dependencies
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler for dependencies without a wheel for this platform and for the relay's own
# compiled fast path (relay/media/_fastloop.c); never in the runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# The pinned dependencies go into the venv; the project itself runs from /app (below),
# where relay/ sits next to static/ as the app expects. Installed from pyproject.toml with
# an empty package in relay/'s place, so this layer is rebuilt only when the dependencies
# change, not with every change of the code.
RUN mkdir relay && touch relay/__init__.py \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall -y interview-relay
# The relay's compiled fast path (relay/media/_fastloop.c), built in place in the source
# tree the runtime copies (below); the import fails the build if it did not compile.
COPY setup.py ./
COPY relay ./relay
RUN /opt/venv/bin/python setup.py build_ext --inplace \
    && /opt/venv/bin/python -c "import relay.media._fastloop"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app
RUN useradd --create-home --uid 10001 --user-group relay \
    && mkdir -p /data/relay /data/recordings \
    && chown -R relay:relay /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY config.toml ./
COPY --from=build /src/relay ./relay
COPY static ./static

# Configuration comes from the environment (config.toml here holds the defaults):
# DATABASE_URL, REDIS_URL, OPENAI_API_KEY, RELAY_OPERATOR_TOKEN, RELAY_TURN_SECRET and any
# RELAY__SECTION__KEY (lists as JSON). Never bake secrets into the image.
# In containers: listen on all interfaces, gather every interface address for ICE, bind
# media in the published UDP range, log JSON, keep state and recordings on the volume.
# The range holds global_max_sessions x 3 ports (docs/deploy.md: one host address gathered,
# no TURN on the relay's own legs, every exchange at its peak): 100 x 3 = 300, below the
# kernel's ephemeral ports (32768-60999), which any process's sockets may take.
ENV RELAY__SERVER__HOST=0.0.0.0 \
    RELAY__SERVER__PORT=8080 \
    RELAY__SERVER__LOG_FORMAT=json \
    RELAY__SERVER__CREATE_DEMO_USER=false \
    RELAY__SERVER__DATA_DIR=/data/relay \
    RELAY__ICE__HOST_ADDRESSES=[] \
    RELAY__LIMITS__GLOBAL_MAX_SESSIONS=100 \
    RELAY__ICE__UDP_PORT_MIN=20000 \
    RELAY__ICE__UDP_PORT_MAX=20299

USER relay
# State and recordings (the local recording directory is /data/recordings).
VOLUME ["/data"]
EXPOSE 8080/tcp
EXPOSE 20000-20299/udp
# On the port the relay listens on (RELAY__SERVER__PORT may move it, as compose does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('RELAY__SERVER__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
# SIGTERM drains: no new sessions, live interviews get server.drain_timeout_s to finish
# (give the container a stop timeout above it).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "relay", "serve"]
