"""`make bench`: zapflow's hot paths against raw-library baselines, written to BENCHMARKS.md."""
