"""Erasure of an interview or a user (a candidate) and everything of theirs: marked in
one transaction, then deleted once nothing of it is left elsewhere (docs/api.md,
"Erasure")."""
