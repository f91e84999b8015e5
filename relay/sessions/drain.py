"""Whether this process still admits sessions.

A process drains once, for good: on SIGTERM (``relay serve``) or on the cluster's
``drain`` command (relay.cluster.runtime). From then on new sessions and exchanges get
503 ``draining`` (``SessionService.refuse_if_draining``), ``/readyz`` says so and the
cluster view shows it; live interviews go on until they end or the drain deadline.
The gauge ``relay_draining`` says it to Prometheus, which does not see ``/readyz``: a member
drained by the command stays up, admitting nothing, until it is restarted.
"""

from __future__ import annotations

from relay.observability.metrics import MetricsRegistry


class DrainState:
    def __init__(self, metrics: MetricsRegistry) -> None:
        self._draining = False
        self._gauge = metrics.gauge(
            "relay_draining", "1 once this process drains (admits no new sessions), 0 before"
        )
        self._gauge.set(0)  # the series exists from the start, for alerts and dashboards

    @property
    def draining(self) -> bool:
        return self._draining

    def start(self) -> bool:
        """Stop admitting sessions; True if this call started the drain."""
        started = not self._draining
        self._draining = True
        self._gauge.set(1)
        return started
