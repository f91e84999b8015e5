"""Whether this process still admits sessions.

A process drains once, for good: on SIGTERM (``relay serve``) or on the cluster's
``drain`` command (relay.cluster.runtime). From then on new sessions and exchanges get
503 ``draining`` (``SessionService.refuse_if_draining``), ``/readyz`` says so and the
cluster view shows it; live interviews go on until they end or the drain deadline.
"""

from __future__ import annotations


class DrainState:
    def __init__(self) -> None:
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def start(self) -> bool:
        """Stop admitting sessions; True if this call started the drain."""
        started = not self._draining
        self._draining = True
        return started
