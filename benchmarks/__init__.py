"""Benchmarks (not tests): throughput and memory, printed as JSON lines; results in benchmarks/results/."""
