"""Guards the three private aiohttp names relay.web.low_level relies on, so an aiohttp
upgrade that moves them fails here, by name, rather than silently dropping the JSON body
of malformed-request errors."""

from __future__ import annotations

import inspect

from aiohttp import web

from relay.config import ServerConfig
from relay.observability.metrics import MetricsRegistry
from relay.web import low_level


def test_application_request_factory_takes_the_request_class() -> None:
    parameters = inspect.signature(web.Application._make_request).parameters
    assert "_cls" in parameters


def test_request_prepare_hook_and_match_info_exist() -> None:
    assert inspect.iscoroutinefunction(web.Request._prepare_hook)
    assert "_match_info" in inspect.getsource(web.Request._prepare_hook)
    assert issubclass(low_level._LowLevelAwareRequest, web.Request)


def test_handler_args_are_request_handler_options() -> None:
    # aiohttp drops every custom option, with a warning only, when one is not accepted:
    # the header deadline (keepalive_timeout) would then silently go.
    from aiohttp.web_protocol import RequestHandler

    accepted = inspect.signature(RequestHandler.__init__).parameters
    args = low_level.handler_args(MetricsRegistry(), ServerConfig(header_timeout_s=3.0))
    assert set(args) <= set(accepted)
    assert args["keepalive_timeout"] == 3.0
