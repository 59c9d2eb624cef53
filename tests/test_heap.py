"""Freed heap pages go back to the OS: glibc's malloc_trim, callable from vLLM's worker too."""

import psutil

from deployments.heap import WorkerExtension, release_freed_memory


def test_freed_pages_go_back_after_a_release():
    process = psutil.Process()
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # 256 MiB in blocks under mmap's bar
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch each page
    held = process.memory_info().rss
    del blocks
    release_freed_memory()
    WorkerExtension().release_freed_memory()  # the worker's entry point does the same
    assert process.memory_info().rss < held - 128 * 1024 * 1024
