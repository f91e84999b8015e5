"""Reproducible benchmarks of the media bridge (run as scripts; see docs/benchmarks.md)."""
