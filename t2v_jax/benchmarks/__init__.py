"""Speed benchmarks that systems declare; `scripts/benchmark.py` runs the config's system's one."""
