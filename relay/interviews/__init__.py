"""Interviews: one candidate's interview with its own interviewer, budget and candidate
link, its status as its sessions live and end, and its webhook events (design.md §10)."""
