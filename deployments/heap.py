"""Freed heap memory handed back to the OS, in the embedder and inside vLLM's worker process.

glibc keeps the pages of freed allocations for reuse, and model serving frees many of every size:
each batch has a shape of its own (texts x longest text, sequences x tokens), so a serving
process's heap grows with the shapes it has seen. `release_freed_memory` after each encode (and
on a period in the worker) keeps it flat for a few percent more time (`python -m benchmarks.heap`;
figures in benchmarks/RESULTS.md). No Ray, no vLLM import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    """glibc's malloc_trim(0): free pages at the top and inside the heap go back to the OS
    (elsewhere than glibc, nothing)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class WorkerExtension:
    """Mixed into vLLM's worker class (engine arg `worker_extension_cls`), so the LLM replica can
    ask the worker process, where the model runs, to release: `engine.collective_rpc(...)`."""

    def release_freed_memory(self) -> None:
        release_freed_memory()
