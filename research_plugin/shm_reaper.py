"""Remove the shared-memory segments a group of processes leaves in ``/dev/shm`` when it is killed.

vLLM's engine and worker processes talk through POSIX shared memory (``psm_*``: its message queues, a few hundred
MB each; its worker also leaves a ``sem.loky-*`` semaphore at times) and verl hands weights to them through
``verl_weights_*`` buckets when CUDA IPC is not available. They
unlink these on a clean shutdown, but at the end of a training job Ray kills the rollout servers and their child
processes, so every run would leave its segments behind, holding RAM until the next reboot.

:func:`watch` starts a small reaper process in a session of its own (so it outlives the group kill). While the
watched processes (and, with ``descendants``, the processes they start) live, it notes which segments with the
known prefixes they have mapped (``/proc/PID/maps``); once all of them are gone it unlinks each noted segment that
no live process maps any more. It never touches a segment the watched processes did not map, nor one still in use.
verl's vLLM worker extension on CPU watches the vLLM processes; OpenRLHF's agent executor watches its rollout
actor and the vLLM engine processes it starts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

SHM = Path("/dev/shm")
PREFIXES = ("psm_", "verl_weights_")
"""Python's shared memory (vLLM's message queues) and verl's weight buckets, found in the processes' maps."""
OWNED_BY_NAME = "sem.loky-"
"""joblib/loky semaphores, named after the process that made them (``sem.loky-<pid>-<random>``); vLLM's worker
leaves one, not mapped any more by the time it dies."""


def mapped_segments(pid: int | str, prefixes: Iterable[str] = PREFIXES) -> set[str]:
    """Names of the ``/dev/shm`` files with one of ``prefixes`` that process ``pid`` maps (empty if it is gone)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except (OSError, ValueError):
        return set()
    names: set[str] = set()
    if f"{SHM}/" not in maps:  # most processes map nothing there: skip their (long) maps without splitting them
        return names
    for line in maps.splitlines():
        if f"{SHM}/" not in line:
            continue
        path = line.split(maxsplit=5)[-1]
        if path.startswith(f"{SHM}/"):
            name = path[len(str(SHM)) + 1 :].removesuffix(" (deleted)")
            if name.startswith(tuple(prefixes)):
                names.add(name)
    return names


def named_after(pid: int | str) -> set[str]:
    """The ``/dev/shm`` files whose name says process ``pid`` made them (:data:`OWNED_BY_NAME`)."""
    return {p.name for p in SHM.glob(f"{OWNED_BY_NAME}{pid}-*")}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has unmapped everything


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.update(int(c) for c in task.read_text().split())
        except (OSError, ValueError):
            pass
    return found


def _in_use(names: set[str]) -> set[str]:
    used: set[str] = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            used |= mapped_segments(proc.name) & names
    return used


def reap(
    pids: list[int],
    *,
    seen: Iterable[str] = (),
    descendants: bool = False,
    interval: float = 2.0,
    prefixes: Iterable[str] = PREFIXES,
) -> list[str]:
    """Follow ``pids`` (and their descendants) until all have exited, then unlink the segments they mapped (or
    ``seen`` says they did) and nobody maps now."""
    prefixes = tuple(prefixes)
    seen = {name for name in seen if name.startswith(prefixes)}
    known, alive = set(pids), list(pids)
    while True:
        alive = [pid for pid in alive if _alive(pid)]  # the exited ones are never looked at again
        if descendants:
            new = set().union(*(_children(pid) for pid in alive)) - known - {os.getpid()}
            known |= new
            alive += sorted(new)
        for pid in alive:
            seen |= mapped_segments(pid, prefixes) | named_after(pid)
        if not alive:
            break
        time.sleep(interval)
    removed = []
    for name in sorted(seen - _in_use(seen)):
        try:
            (SHM / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass  # its owner unlinked it on a clean shutdown
    return removed


def watch(pids: Iterable[int], descendants: bool = False, interval: float = 2.0) -> int | None:
    """Start a detached reaper for ``pids``, looking at their maps every ``interval`` seconds (a segment mapped and
    left behind between two looks is missed); returns its process id (Linux only; elsewhere, and if ``/dev/shm`` is
    absent, nothing is started and None is returned).

    The reaper is a grandchild in a session of its own, re-parented away from the caller: Ray kills the child
    processes of a worker it stops, and the reaper must outlive them.
    """
    pids = sorted({int(p) for p in pids if int(p) > 1})
    if not sys.platform.startswith("linux") or not SHM.is_dir() or not pids:
        return None
    seen = set().union(*(mapped_segments(pid) for pid in pids))  # what they map now, in case they die first
    cmd = [sys.executable, "-m", __name__, "--detach", "--interval", str(interval), *map(str, pids)]
    cmd += ["--seen", *sorted(seen)] if seen else []
    launcher = subprocess.Popen(
        [*cmd, *(["--descendants"] if descendants else [])],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        text=True,
    )
    line = launcher.stdout.readline()
    launcher.wait()
    return int(line) if line.strip().isdigit() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pids", nargs="+", type=int)
    parser.add_argument("--seen", nargs="*", default=[], help="segments they are known to have mapped")
    parser.add_argument("--descendants", action="store_true", help="follow the processes they start too")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--detach", action="store_true", help="fork, print the reaper's pid, and return at once")
    args = parser.parse_args(argv)
    if args.detach:
        child = os.fork()
        if child:
            print(child, flush=True)
            os._exit(0)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
    reap(args.pids, seen=args.seen, descendants=args.descendants, interval=args.interval)


if __name__ == "__main__":
    main()
