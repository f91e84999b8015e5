"""One interview's media bridge: browser peer ⇄ relay ⇄ upstream peer.

``Bridge.start(offer)`` answers the browser's offer with one aiortc peer, offers to the
upstream with a second peer (Opus audio sendrecv + data channel ``oai-events``),
applies the upstream's answer, chooses how each audio direction is forwarded and
returns the browser's answer. Any failure on the way tears both legs down and
finishes the session as failed with a reason, then re-raises.

After that a supervisor task owns the lifecycle: both legs connected within
``connect_timeout_s`` (else failed ``connect_timeout``), then active until one of:
idle media, maximum duration, a hang-up (``close``), either peer failing or closing,
either data channel closing, or the supervisor itself failing (``internal_error``).
Teardown closes both peers, hangs up the upstream call and reports the real
duration to the session layer, exactly once, whatever went wrong before.

Read the modules one at a time, in this order:

* ``base``: the contract (settings, hooks Protocol, end states, errors);
* ``core``: the ``Bridge`` facade (state, public API) that the others act on;
* ``negotiation``: both legs' offer/answer, up to a wired bridge;
* ``audio_wiring``: one ``Forwarder`` per direction (the only place audio passes);
* ``peer_events``: peer and data-channel events that end the bridge;
* ``supervision``: connect timeout, then idle/max-duration monitoring;
* ``teardown``: closing everything, exactly once;
* ``quality``: the stats snapshot and metric publishing.
"""

from relay.media.bridge.base import (
    BridgeClosed,
    BridgeHooks,
    BridgeSettings,
    BridgeState,
    EndState,
    UpstreamAnswerInvalid,
    failure_reason,
)
from relay.media.bridge.core import Bridge

__all__ = [
    "Bridge",
    "BridgeClosed",
    "BridgeHooks",
    "BridgeSettings",
    "BridgeState",
    "EndState",
    "UpstreamAnswerInvalid",
    "failure_reason",
]
