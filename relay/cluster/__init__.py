"""What makes many relay processes behave as one service: shared pending sessions,
shared limits, membership with heartbeats, and commands that reach every member."""
