"""Hand the C heap's free pages back to the OS once a graph is loaded.

Creating an onnxruntime session parses the whole file, copies every initializer out of the parse, prepacks the
int8 weights and then frees the parse and the unpacked copies. glibc keeps those freed megabytes in the heap
(its mmap threshold rises after the first large free, so later large blocks come from the heap), and the process
stays at its load high-water mark: full-size int8 bundle, 796 MB resident after loading, 636 MB after a
`malloc_trim` per session (measured). Only glibc has `malloc_trim`; elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache


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
