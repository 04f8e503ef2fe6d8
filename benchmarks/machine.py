"""What the numbers were measured on: CPU, threads, versions, and this machine's DRAM read bandwidth now."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def read_bandwidth_gbs(threads: int = 2, size_mb: int = 1024, repeats: int = 5) -> float:
    """DRAM read bandwidth (GB/s): best of `repeats` sums over a buffer far larger than the last-level cache."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(size_mb * (1 << 20) // 4, dtype=torch.float32)
        buf.sum()  # fault the pages in
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            buf.sum()
            best = min(best, time.perf_counter() - t0)
        return buf.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(prev)


def describe(threads: int) -> dict:
    """Machine and package versions, read without importing torch (a runtime-only install has none)."""
    versions = {}
    for pkg in ("omni-onnx", "numpy", "onnxruntime", "tokenizers", "jiwer", "torch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions}
