"""Build the upstream client from the settings (the app's one entry point to this package)."""

from __future__ import annotations

from relay.config import Settings
from relay.observability.metrics import MetricsRegistry
from relay.upstream.client import OpenAIRealtimeClient


def build_upstream_client(
    settings: Settings,
    metrics: MetricsRegistry,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
) -> OpenAIRealtimeClient:
    """The configured client; ``base_url``/``api_key`` override the settings (the app
    passes the embedded simulator's URL and key when no OpenAI key is configured)."""
    config = settings.upstream.model_copy(
        update={
            "base_url": settings.upstream.base_url if base_url is None else base_url,
            "api_key": settings.upstream.api_key if api_key is None else api_key,
        }
    )
    return OpenAIRealtimeClient(config, metrics=metrics)
