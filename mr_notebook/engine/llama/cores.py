"""Decode threads that give way when other processes keep the cores busy.

llama.cpp's threads wait for each other at every operation of a decode (hundreds per token). When another
process takes a core from one of them, all of them wait: on a 2-core machine with a test suite or a pandas
cell running beside it, SmolLM2 fell from 66 to 10 tokens/s with 2 threads while 1 thread still made 30. So
the worker watches how much CPU the rest of the machine uses (psutil, once a second) and decodes with the
cores that are left, never more than its setting. Threads do not change results: llama.cpp gives each output
row to one thread, so a greedy answer is the same with 1 or 2.
"""

from __future__ import annotations

import os
import time

import psutil

#: Seconds between looks at the machine.
EVERY = 1.0


def logical_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return psutil.cpu_count() or 1


def threads_for(limit: int, cpus: int, others: float) -> int:
    """Threads to use when other processes use ``others`` cores' worth of CPU (rounded to whole cores)."""
    return max(1, min(limit, cpus - int(others + 0.5)))


class CoreShare:
    """Call ``check`` between decodes; it returns a new thread count when the machine's load calls for one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = limit
        self.cpus = logical_cpus()
        self._me = psutil.Process()
        self._raise_votes = 0
        self._at, self._busy, self._mine = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0)
        busy -= getattr(times, "guest_nice", 0.0)
        mine = self._me.cpu_times()
        return time.monotonic(), busy, mine.user + mine.system

    def check(self) -> int | None:
        if self.limit <= 1 or time.monotonic() - self._at < EVERY:
            return None
        at, busy, mine = self._sample()
        others = max(0.0, (busy - self._busy) - (mine - self._mine)) / max(at - self._at, 1e-3)
        self._at, self._busy, self._mine = at, busy, mine
        target = threads_for(self.limit, self.cpus, others)
        if target < self.current:  # give way at once
            self._raise_votes = 0
        elif target > self.current:  # take cores back only when they stayed free two looks in a row
            self._raise_votes += 1
            if self._raise_votes < 2:
                return None
            self._raise_votes = 0
        else:
            self._raise_votes = 0
            return None
        self.current = target
        return target
