"""Benchmarks: `omni-bench` (latency, memory, fidelity against our torch reference, quality)."""
