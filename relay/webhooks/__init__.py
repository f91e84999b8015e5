"""Webhooks: events about interviews and recordings, written to an outbox in PostgreSQL in
the same transaction as the change they report, and delivered to the endpoints a hiring
team registered (design.md §11)."""
