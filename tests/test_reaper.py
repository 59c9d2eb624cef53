"""The engine reaper with real processes: a stand-in replica starts it, then spawns a child that
spawns a grandchild (as a replica spawns EngineCore and EngineCore its worker); the replica is
SIGKILLed (what `ray.kill` and `ray stop --force` do) and both descendants must be gone."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from deployments import reaper
from tests.helpers import ended, wait_until

REPLICA = textwrap.dedent("""
    import subprocess, sys, time
    from deployments import reaper
    reaper.watch_me(interval=0.1)
    # A child that ignores SIGTERM and starts a grandchild, both in this process group.
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(g.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    grandchild = child.stdout.readline().strip()
    print(child.pid, grandchild, flush=True)
    time.sleep(600)
""")


def test_killed_replica_leaves_no_descendant():
    replica = subprocess.Popen([sys.executable, "-c", REPLICA], stdout=subprocess.PIPE, text=True,
                               cwd=os.path.dirname(os.path.dirname(reaper.__file__)))
    child, grandchild = map(int, replica.stdout.readline().split())
    watcher = [p for p in psutil.Process(replica.pid).children()
               if reaper.__file__ in " ".join(p.cmdline())]
    assert len(watcher) == 1 and watcher[0].pid not in (child, grandchild)
    time.sleep(0.5)  # the watcher has seen both descendants
    replica.send_signal(signal.SIGKILL)
    replica.wait()
    wait_until(lambda: ended(child) and ended(grandchild), 10,
               "the replica's child and grandchild to end", interval_s=0.1)
    watcher[0].wait(10)  # and the watcher itself ends


def test_nothing_to_do_for_a_missing_process():
    assert reaper.watch(2 ** 22 + 12345) == []
