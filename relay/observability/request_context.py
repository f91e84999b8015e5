"""Per-request context carried through await chains: the request id and stage timings.

The HTTP middleware opens a context for each request (``bind_session`` adds the session id
once a route knows it); anything below it (cache,
database, upstream client) records how long its stage took with ``record_stage`` and
logs through the request-aware logger, without threading a parameter everywhere.
Outside a request these calls are harmless no-ops.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field


@dataclass
class RequestContext:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    # Stage name → accumulated milliseconds (e.g. cache, db, upstream).
    stages: dict[str, float] = field(default_factory=dict)
    # The interview session this request is about, once known (set by bind_session). Tasks
    # started by the request (the media bridge) share this object, so their lines carry it.
    session_id: str | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def record(self, stage: str, ms: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + ms

    def server_timing(self) -> str:
        parts = [f"{name};dur={ms:.1f}" for name, ms in self.stages.items()]
        parts.append(f"total;dur={self.elapsed_ms():.1f}")
        return ", ".join(parts)


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "relay_request_context", default=None
)


def begin(request_id: str) -> contextvars.Token[RequestContext | None]:
    return _current.set(RequestContext(request_id))


def end(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


def current() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str:
    ctx = _current.get()
    return ctx.request_id if ctx else "-"


def record_stage(stage: str, ms: float) -> None:
    ctx = _current.get()
    if ctx is not None:
        ctx.record(stage, ms)


def current_session_id() -> str | None:
    ctx = _current.get()
    return ctx.session_id if ctx else None


def bind_session(session_id: str) -> None:
    """Tag every later log line of this request (and of tasks it starts) with the session."""
    ctx = _current.get()
    if ctx is not None:
        ctx.session_id = session_id


def begin_session_task(session_id: str) -> None:
    """At the start of a task that works for ``session_id`` (a bridge's teardown): tag every
    later line of this task (and of tasks it starts) with that session, keeping the request
    id of the context it was started in, if any.

    Such a task may be started where no request is being served (a timer, a drain, a
    cluster command), or by a request about another session (a new one superseding it):
    ``bind_session`` would then tag nothing, or relabel that request. Setting a context of
    its own changes neither: a task runs in its own copy of the context."""
    ctx = _current.get()
    if ctx is None:
        _current.set(RequestContext("-", session_id=session_id))
    elif ctx.session_id != session_id:
        _current.set(RequestContext(ctx.request_id, started=ctx.started, session_id=session_id))
