"""Side-by-side benchmarks (`make bench`): see bench/run.py and docs/performance.md."""
