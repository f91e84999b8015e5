"""``python -m bench``: the shipped relay end to end (see bench/shipped.py)."""

from bench.shipped import main

main()
