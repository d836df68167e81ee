"""One team of OpenMP threads per inference worker (workers/compute_threads.py), checked against torch's real
OpenMP runtime by counting a process's threads: a thread that computes inline adds none, the engine's thread
keeps a team for its life, and `with_team` work leaves none behind.

The counting runs in a process of its own, where no other test's threads start or end meanwhile."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import ROOT

SCENARIO = r"""
import json, os, threading, time
import torch
from workers import compute_threads

def threads():
    return len(os.listdir("/proc/self/task"))

def settled(expected, timeout=5.0):  # threads told to end take a moment
    deadline = time.monotonic() + timeout
    while threads() != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return threads()

tensor = torch.ones(4_000_000)  # far above torch's grain size: an op on it runs in parallel where it may
compute_threads.with_team(lambda: tensor.mul(2))  # torch's first thread-count change starts a thread for good
time.sleep(0.5)
before = threads()
counts = {"before": before, "engine_threads": compute_threads.ENGINE_THREADS}

def alive_after(name, setup):  # a thread that computes, then stays alive while the threads are counted
    done, release = threading.Event(), threading.Event()
    def run():
        setup()
        tensor.mul(2)
        done.set()
        release.wait()
    thread = threading.Thread(target=run)
    thread.start()
    done.wait(30)
    counts[name] = threads()
    release.set()
    thread.join()
    counts[name + " ended"] = settled(before)

alive_after("engine", compute_threads.for_engine)
alive_after("inline", compute_threads.inline)
counts["with_team saw"] = compute_threads.with_team(lambda: (tensor.mul(2), torch.get_num_threads())[1])
counts["with_team ended"] = settled(before)
try:
    compute_threads.with_team(lambda: 1 / 0)
    counts["error raised"] = False
except ZeroDivisionError:
    counts["error raised"] = True
print(json.dumps(counts))
"""


def test_only_the_engine_thread_keeps_a_team_and_a_team_for_one_batch_ends_with_it():
    done = subprocess.run([sys.executable, "-c", SCENARIO], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    before, team = counts["before"], counts["engine_threads"] - 1  # a team: its leader and team - 1 others
    assert counts["engine"] == before + 1 + team, counts
    assert counts["inline"] == before + 1, f"a thread computing inline made threads of its own: {counts}"
    assert counts["with_team saw"] == counts["engine_threads"]
    assert counts["engine ended"] == counts["inline ended"] == counts["with_team ended"] == before, counts
    assert counts["error raised"], "an error in with_team's work is raised in the caller's thread"
