"""Large temporaries go back to the operating system when freed (glibc), so a compile's peak memory is what it
holds at once, not what the allocator kept.

glibc serves an allocation above its mmap threshold with its own mapping, returned on free; below it, from
the heap, which rarely shrinks. The threshold starts at 128 KiB but rises to the size of any mapped block
freed (up to 32 MiB), after which a layer-sized float64 temporary of the verification — cast, used, freed
one layer at a time — comes from the heap and stays there: on a 113 MB model the peak rose by 0.7x the
weights from that alone. :func:`release_large_allocations` fixes the threshold at 1 MiB (``mallopt``) for
the process; ``PRUNEC_MALLOC_TRIM=0`` leaves the allocator as it is. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["release_large_allocations"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_done = False


def release_large_allocations(threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (once per process). Returns whether it was set."""
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("PRUNEC_MALLOC_TRIM", "1") == "0":
        return _done
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except OSError:
        ok = False
    _done = ok
    return ok
