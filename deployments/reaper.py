"""Ends a replica's engine processes when the replica process dies, however it dies.

vLLM runs its engine core (and the core its worker) as child processes, and the core does not
watch its parent: a replica that Ray kills (`ray.kill`, a failed health check past its grace
period, `ray stop --force`, a constructor interrupted while the engine loads) leaves them running
with parent 1, holding their memory (~3 GB each for SmolLM2 here). Ray's own remedy
(`RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper`) lives in the raylet, so it
misses `ray stop`, which ends the raylet too.

So each LLM replica starts this watcher first (`watch_me`). It runs as a plain script in a session
of its own (out of reach of signals sent to the replica's process group, and not a process `ray
stop` looks for), notes the replica's descendants every `interval` seconds, and once the replica
is gone kills the last ones it saw, then exits. psutil refuses to signal a pid reused since.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(pid: int, interval: float = 0.5) -> list[int]:
    """Blocks while `pid` lives; then kills its descendants as last seen (not this watcher).
    Returns the pids it killed."""
    try:
        replica = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    seen: list[psutil.Process] = []
    while alive(replica):
        try:
            seen = [p for p in replica.children(recursive=True) if p.pid != os.getpid()]
        except psutil.NoSuchProcess:
            break
        time.sleep(interval)
    killed = []
    for process in seen:
        with contextlib.suppress(psutil.NoSuchProcess):  # one that ended with its replica
            process.kill()  # SIGKILL: also ends a stopped (SIGSTOP) or hung engine
            killed.append(process.pid)
    return killed


def watch_me(interval: float = 0.5) -> subprocess.Popen:
    """Starts the watcher for the calling process."""
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(os.getpid()), str(interval)],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, close_fds=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.5)
