"""Throwaway real services for tests (PostgreSQL, Redis) and the helpers behind them.

The pytest fixtures that use these live in ``tests/conftest.py``.
"""
