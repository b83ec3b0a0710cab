"""Benchmarks of the gateway against the fake ModelScope on loopback: they print figures, they
assert nothing. Run them all with `make bench`, or one with `python -m bench lag` (from the repo
root, with PYTHONPATH=layers/common:tests). Results also go to bench/results/latest.json."""
