"""The benchmarks' one timing rule: the best of ``repeats`` calls of ``fn`` after a warm-up call,
in seconds of ``clock`` (wall time by default; ``time.process_time`` for CPU time on a shared machine).
Imported by the scripts beside it (``python benchmarks/<script>.py`` puts this folder on the path)."""
from __future__ import annotations

import time


def best_time(fn, repeats, clock=time.perf_counter):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best
