# The relay as a container. Media terminates in this process, so each replica needs its
# UDP reachable by candidates (host networking, or a TURN service: see docs/deploy.md).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 relay
WORKDIR /app
COPY pyproject.toml README.md config.toml ./
COPY relay ./relay
COPY static ./static
RUN pip install .

USER relay
# In containers: listen on all interfaces, gather every interface address for ICE,
# log JSON. DATABASE_URL, REDIS_URL, OPENAI_API_KEY and RELAY_OPERATOR_TOKEN come from
# the environment (never bake secrets into the image).
ENV RELAY__SERVER__HOST=0.0.0.0 \
    RELAY__SERVER__LOG_FORMAT=json \
    RELAY__SERVER__CREATE_DEMO_USER=false \
    RELAY__ICE__HOST_ADDRESSES=[]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status==200 else 1)"
# SIGTERM drains: no new sessions, live interviews get server.drain_timeout_s to finish.
STOPSIGNAL SIGTERM
CMD ["relay", "serve"]
