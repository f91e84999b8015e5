"""Masked e-mail addresses for operator views (dashboard, cluster view): the shape of
an address, never the address."""

from __future__ import annotations


def mask_email(email: str) -> str:
    """``jane.doe@example.com`` → ``j***e@example.com``; short local parts keep 1 char."""
    if not email:
        return ""
    local, at, domain = email.rpartition("@")
    if not at:
        local, domain = email, ""
    masked = local[:1] + "***" if len(local) <= 2 else f"{local[0]}***{local[-1]}"
    return f"{masked}@{domain}" if domain else masked
