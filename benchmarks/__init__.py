"""Side-by-side benchmarks against peers; each module writes JSON to benchmarks/results/."""
