"""What an instance costs, for ``booster status``: memory, CPU time, start time.

The whole instance counts, not just its service manager: where it has a
cgroup, everything in it (a service that left the instance's process tree
with ``setsid`` and a double fork included); without one, the instance
process and its descendants.

* memory: the cgroup's ``memory.current`` where the memory controller is
  enabled for it (cgroup2), which counts what the kernel charges the cgroup
  (page cache included); else the sum of its processes' resident sets.  The
  booster makes no cgroup of its own in a v1 ``memory`` hierarchy, so on a
  host without the cgroup2 memory controller the processes' sum is the figure.
* CPU time: the cgroup's ``cpu.stat`` ``usage_usec``, which cgroup2 keeps for
  every cgroup whether or not the cpu controller is enabled, and which counts
  every process that ever ran in it; without a cgroup, user and system time
  of the instance's processes plus what the children they reaped used.
* start time: the instance process's.

Reads ``/proc`` and cgroupfs only, read-only; the booster runs it in a worker
thread so that a listing of many instances never holds up a login.
"""

from __future__ import annotations

import dataclasses
import os

import psutil

from booster.peers import start_ticks


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    rss: int = 0          # bytes
    cpu_ms: int = 0       # milliseconds, user and system
    started_ms: int = 0   # milliseconds since the epoch
    processes: int = 0
    source: str = ""      # where the figures come from; empty: no instance measured


NONE = Usage()
SOURCE_CGROUP_MEMORY = "cgroup"
SOURCE_CGROUP_PROCESSES = "cgroup processes"
SOURCE_TREE = "process tree"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _cgroup_cpu_usec(cgroup: str) -> int | None:
    try:
        with open(os.path.join(cgroup, "cpu.stat")) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def _cgroup_pids(cgroup: str) -> list[int] | None:
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as fh:
            return [int(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        return None


def _rss_and_cpu(procs) -> tuple[int, float, int]:
    """Summed resident set (bytes), CPU seconds (own and reaped children's),
    and how many of ``procs`` could be read (the others ended meanwhile)."""
    rss, cpu, counted = 0, 0.0, 0
    for proc in procs:
        try:
            with proc.oneshot():
                mem = proc.memory_info()
                times = proc.cpu_times()
        except psutil.Error:
            continue
        rss += mem.rss
        cpu += times.user + times.system + times.children_user + times.children_system
        counted += 1
    return rss, cpu, counted


def measure(pid: int, ticks: int | None, cgroup: str | None) -> Usage:
    """The usage of the instance ``pid`` that started ``ticks`` clock ticks
    after boot (a later process with the same pid is not measured), in the
    cgroup directory ``cgroup`` if it has one."""
    if ticks is None:
        return NONE
    try:
        instance = psutil.Process(pid)
        # Checked after: the instance started before and lives (it has the pid
        # now), so it is the process psutil found.
        if start_ticks(pid) != ticks:
            return NONE
        started = instance.create_time()  # the wall-clock time, as shown
    except psutil.Error:
        return NONE
    started_ms = int(started * 1000)
    if cgroup is not None and (pids := _cgroup_pids(cgroup)) is not None:
        memory = _read_int(os.path.join(cgroup, "memory.current"))
        source = SOURCE_CGROUP_MEMORY if memory is not None else SOURCE_CGROUP_PROCESSES
        cpu_usec = _cgroup_cpu_usec(cgroup)
        counted = len(pids)
        if memory is None or cpu_usec is None:
            rss, cpu, counted = _rss_and_cpu(_processes(pids))
            memory = rss if memory is None else memory
            cpu_usec = int(cpu * 1_000_000) if cpu_usec is None else cpu_usec
        return Usage(memory, cpu_usec // 1000, started_ms, counted, source)
    try:
        procs = [instance, *instance.children(recursive=True)]
    except psutil.Error:
        return NONE
    rss, cpu, counted = _rss_and_cpu(procs)
    return Usage(rss, int(cpu * 1000), started_ms, counted, SOURCE_TREE)


def _processes(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass  # ended meanwhile
    return procs


def measure_all(instances) -> list[Usage]:
    """``measure`` for each ``(pid, ticks, cgroup)``; ``NONE`` where pid is 0."""
    return [measure(pid, ticks, cgroup) if pid else NONE for pid, ticks, cgroup in instances]
