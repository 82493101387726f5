"""Keep memory that tensors free inside the process, instead of handing it back to the OS every step;
and hand it back where a loop of many unlike-sized batches would only pile it up (evaluation).

glibc serves large blocks (a batch's [B, K, N+1] logits when the catalogue is large) with mmap and
unmaps them on free, so every training step page-faults its largest tensors in again and zero-fills
them: at 70k items a third of the CPU time went to the kernel. With mmap off for malloc and no heap
trimming, a step reuses the blocks the previous step freed. (PyTorch's CPU tuning guide gets the same
from jemalloc or tcmalloc via LD_PRELOAD; this needs nothing installed.) A no-op off glibc.

The price is fragmentation: with no trimming, pages freed between batches of unlike sizes stay
resident. Validating after training at 1M items (benchmarks/eval_memory.py), resident memory grew
from 5.71 to 6.30 GB over 77k queries while the bytes in use stayed at 4.95 GB: what grew was the
free memory malloc held (0.47 -> 1.05 GB). So evaluation and `recommend --all` hand the free pages
back after every batch (release_freed_memory), which costs nothing next to a batch's ranking.
"""
from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library's handle, opened once (release_freed_memory runs after every evaluation batch);
    None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse. True if it took effect."""
    libc = glibc()
    try:
        return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except AttributeError:              # not glibc (musl, ...): keep the default allocator
        return False


def release_freed_memory() -> bool:
    """Hand the pages malloc holds free back to the OS (glibc's malloc_trim: every arena, holes included),
    so a long loop's resident memory is what it uses. True if glibc did release some."""
    libc = glibc()
    try:
        return libc is not None and bool(libc.malloc_trim(0))
    except AttributeError:
        return False
