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

The bridge is one state machine (``new → negotiating → connecting → active → closing →
closed``, ``active ⇄ browser_lost ⇄ resuming`` while a dropped browser leg may come back,
and ``closing`` from any state before it): ``Bridge`` alone writes its state, one
method per transition, each checked against ``state.TRANSITIONS`` (a move the table does
not allow raises ``InvalidTransition``). The other modules do one job each, never see the
``Bridge`` and write none of its attributes: they take what they need and return a result
or report through callbacks. Read them one at a time, in this order:

* ``base``: the contract (settings, hooks Protocol, end states, errors);
* ``state``: the states and the allowed transitions;
* ``clock``: the interview's clock (time away from the browser not charged);
* ``core``: the ``Bridge`` (state, transitions, public API), which wires the others;
* ``negotiation``: both legs' offer/answer; returns a ``Negotiated``;
* ``audio_wiring``: one ``Forwarder`` per direction (the only place audio passes);
* ``peer_events``: ``PeerWatch``, peer and data-channel events, reported by callback;
* ``supervision``: ``Supervisor``, connect timeout then idle/max-duration, the time
  announcements, the wrap-up, the overrun and a lost leg's grace, by callback;
* ``talk``: what the relay itself says to the page (``relay.*``) and to the upstream;
* ``teardown``: releasing everything the bridge holds;
* ``quality``: the stats snapshot and metric publishing.
"""

from relay.media.bridge.base import (
    RETRYABLE_RESUME_REFUSALS,
    BridgeClosed,
    BridgeHooks,
    BridgeSettings,
    ContinuityHooks,
    EndState,
    ResumeRefused,
    Seed,
    UpstreamAnswerInvalid,
    failure_reason,
)
from relay.media.bridge.core import Bridge
from relay.media.bridge.state import TRANSITIONS, BridgeState, InvalidTransition

__all__ = [
    "Bridge",
    "BridgeClosed",
    "BridgeHooks",
    "BridgeSettings",
    "BridgeState",
    "ContinuityHooks",
    "EndState",
    "InvalidTransition",
    "RETRYABLE_RESUME_REFUSALS",
    "ResumeRefused",
    "Seed",
    "TRANSITIONS",
    "UpstreamAnswerInvalid",
    "failure_reason",
]
