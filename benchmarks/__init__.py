"""Benchmarks: latency against our torch reference and the weight-streaming floor."""
