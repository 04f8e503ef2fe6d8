"""Keep the resident set at what is used: hand the C heap's free pages back to the OS once a graph is loaded, and
allocate large, mostly unused buffers (KV caches sized to the context limit) from pages the OS supplies on first
write.

Creating an onnxruntime session parses the whole file, copies every initializer out of the parse, prepacks the
int8 weights and then frees the parse and the unpacked copies. glibc keeps those freed megabytes in the heap
(its mmap threshold rises after the first large free, so later large blocks come from the heap), and the process
stays at its load high-water mark: full-size int8 bundle, 796 MB resident after loading, 636 MB after a
`malloc_trim` per session (measured). Only glibc has `malloc_trim`; elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from functools import cache

import numpy as np


@cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None (not Linux, or a libc without it, e.g. musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS; True when the platform could (glibc), whether or not any were."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def lazy_zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A zero-filled array whose pages become resident only when written. np.zeros takes large blocks from the heap
    once earlier frees have raised glibc's mmap threshold, and calloc then clears them, so a 2048-position KV cache
    was resident in full before its first token (full-size Thinker + Talker: ~20 MB, measured); an anonymous
    mapping is zero pages until touched, on every platform, and goes back to the OS with the array."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype, count=nbytes // dtype.itemsize).reshape(shape)
