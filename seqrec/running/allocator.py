"""Keep memory that tensors free inside the process, instead of handing it back to the OS every step.

glibc serves large blocks (a batch's [B, K, N+1] logits when the catalogue is large) with mmap and
unmaps them on free, so every training step page-faults its largest tensors in again and zero-fills
them: at 70k items a third of the CPU time went to the kernel. With mmap off for malloc and no heap
trimming, a step reuses the blocks the previous step freed. (PyTorch's CPU tuning guide gets the same
from jemalloc or tcmalloc via LD_PRELOAD; this needs nothing installed.) A no-op off glibc.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse. True if it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):   # not glibc (musl, ...): keep the default allocator
        return False
