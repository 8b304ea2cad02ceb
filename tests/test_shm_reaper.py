"""The shared-memory reaper removes what a killed process group left in /dev/shm, and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import pytest

from research_plugin.shm_reaper import SHM, mapped_segments, watch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not SHM.is_dir(), reason="needs /dev/shm")

OWNER = """
import sys, time
from multiprocessing import resource_tracker, shared_memory
segments = [
    shared_memory.SharedMemory(name=name, create=name.startswith("psm_own"), size=4096) for name in sys.argv[1:]
]
for shm in segments:  # as vLLM's processes are when Ray kills them: nobody will unlink these
    resource_tracker.unregister(shm._name, "shared_memory")
print("ready", flush=True)
sys.stdin.readline()  # then one more, made after the reaper started watching
late = shared_memory.SharedMemory(name=sys.argv[1].replace("own", "late"), create=True, size=4096)
resource_tracker.unregister(late._name, "shared_memory")
print("late", flush=True)
time.sleep(600)
"""


def segment(name: str, create: bool = True) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name=name, create=create, size=4096)
    resource_tracker.unregister(shm._name, "shared_memory")
    return shm


def test_segments_of_a_killed_process_are_removed_and_others_kept():
    tag = uuid.uuid4().hex[:8]
    own, shared, unrelated, other_prefix = f"psm_own{tag}", f"psm_shared{tag}", f"psm_unrelated{tag}", f"x_own{tag}"
    kept = [segment(shared), segment(unrelated), segment(other_prefix)]
    for shm in kept[1:]:  # this process keeps mapping only the first
        shm.close()
    late = own.replace("own", "late")
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER), own, shared, other_prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout.readline().strip() == "ready"
        assert mapped_segments(owner.pid) == {own, shared}
        loky, others_loky = SHM / f"sem.loky-{owner.pid}-t{tag}", SHM / f"sem.loky-{os.getpid()}-t{tag}"
        loky.touch()  # a semaphore named after the process that made it, no longer mapped (vLLM's worker)
        others_loky.touch()
        reaper = watch([owner.pid], interval=0.2)
        assert reaper is not None
        owner.stdin.write("go\n")
        owner.stdin.flush()
        assert owner.stdout.readline().strip() == "late"
        time.sleep(2)  # the reaper looks every 0.2 s
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
        assert gone(reaper)
        assert not (SHM / own).exists()  # the killed process's own segments are gone
        assert not (SHM / late).exists() and not loky.exists()
        assert others_loky.exists()  # named after a process that was not watched
        assert (SHM / shared).exists()  # still mapped here: in use, kept
        assert (SHM / unrelated).exists()  # never mapped by the watched process: not its to remove
        assert (SHM / other_prefix).exists()  # mapped by it, but not a vLLM/verl segment name
    finally:
        owner.kill()
        kept[0].close()
        for name in (own, late, shared, unrelated, other_prefix, f"sem.loky-{owner.pid}-t{tag}",
                     f"sem.loky-{os.getpid()}-t{tag}"):  # fmt: skip
            Path(SHM / name).unlink(missing_ok=True)


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not Path(f"/proc/{pid}").exists()


def test_nothing_to_watch_starts_nothing():
    assert watch([]) is None and watch([1]) is None


def test_descendants_are_followed():
    """A watched process that starts the one owning the segment (OpenRLHF's rollout actor starting vLLM's engine)."""
    tag = uuid.uuid4().hex[:8]
    own = f"psm_own_child{tag}"
    spawn = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {textwrap.dedent(OWNER)!r}, {own!r}], stdout=subprocess.PIPE,
                         stdin=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), child.pid, flush=True)
time.sleep(600)
"""
    parent = subprocess.Popen([sys.executable, "-c", spawn], stdout=subprocess.PIPE, text=True)
    try:
        reaper = watch([parent.pid], descendants=True, interval=0.2)
        ready, child = parent.stdout.readline().split()
        assert ready == "ready"
        time.sleep(2)  # the reaper finds the child and its segment on its next looks
        os.kill(int(child), signal.SIGKILL)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        assert gone(reaper)
        assert not (SHM / own).exists()
    finally:
        parent.kill()
        Path(SHM / own).unlink(missing_ok=True)
