"""How many intra-op threads a decode step or a perplexity pass uses.

``default_threads`` (called by ``generation.greedy_continue`` per batch and by
``metrics.window_nll``) keeps torch's intra-op threads at most at the physical cores this
process may use (CPU affinity, cgroup quota), never above what torch or the user had set, and
uses fewer (one on a 2-core machine) while other processes keep the cores busy (load average,
then a probe of a few ms), unless ``OMP_NUM_THREADS`` or ``PROD_UNLEARN_THREADS`` says
otherwise: an intra-op thread that is descheduled makes every parallel op of a decode step
wait for it.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch


def available_cores() -> int:
    """Physical cores this process may run on: CPU affinity and cgroup quota, SMT siblings counted once."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    try:
        import psutil

        logical, physical = psutil.cpu_count(logical=True), psutil.cpu_count(logical=False)
        smt = max(1, (logical or 1) // (physical or logical or 1))
    except Exception:  # psutil missing or unable to count
        smt = 1
    n = max(1, allowed // smt)
    try:  # cgroup v2 quota, e.g. "200000 100000" = 2 CPUs
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


_THREADS: dict[str, Any] = {"ceiling": None, "chosen": None, "at": -math.inf, "process": None}
DECIDE_EVERY = 60.0  # seconds a thread-count decision is kept


def free_cores(cores: int) -> float:
    """Cores of ``cores`` that other processes leave free, from the 1-minute load average minus
    this process's own CPU use since the previous call (both ~1 minute), relative to the CPUs
    the load is counted over."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return float(cores)
    own = 0.0
    try:
        import psutil

        if _THREADS["process"] is None:
            process = _THREADS["process"] = psutil.Process()
            process.cpu_percent(None)  # primes the counter: 0 the first time
        else:
            own = _THREADS["process"].cpu_percent(None) / 100
    except Exception:
        pass
    total = os.cpu_count() or cores
    return cores * max(0.0, 1.0 - max(0.0, load - own) / total)


def _probe_faster(threads: int) -> bool:
    """Are ``threads`` intra-op threads faster than one on decode-sized ops right now? Times a
    small matmul (a parallel region, as every op of a decode step is: one descheduled thread
    stalls all of them) on one thread, then on ``threads``; stops as soon as the answer is no
    (a stalled op can take 40x longer: the probe must not)."""
    a, w = torch.randn(32, 384), torch.randn(384, 1024)

    def op(n: int, reps: int = 1) -> float:
        torch.set_num_threads(n)
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, w)
        return (time.perf_counter() - t) / reps

    op(1)
    one = sorted(op(1, 4) for _ in range(3))[1]
    op(threads)
    return all(op(threads) < one for _ in range(5))


def keeps_threads(fn):
    """Run ``fn`` (which calls ``default_threads``) and give the caller back its own thread count:
    a training step after an evaluation must not inherit the evaluation's choice."""
    import functools

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        n = torch.get_num_threads()
        try:
            return fn(*a, **kw)
        finally:
            torch.set_num_threads(n)

    return wrapped


def default_threads() -> int:
    """Set torch's intra-op threads to a sensible default and return the count in use.

    ``PROD_UNLEARN_THREADS`` wins; with ``OMP_NUM_THREADS`` set, torch's setting is kept.
    Otherwise the count is at most the physical cores this process may use
    (``available_cores``), at most what torch had when this was first called (a lower
    ``torch.set_num_threads`` by the user is kept), and 1 on a machine whose cores other
    processes keep busy: ``free_cores`` (load average) under all but half a core of that, or
    a probe of a few ms finding one thread faster. Decided at most once a minute. With every
    core taken, an extra intra-op thread is descheduled and every parallel op waits for it
    (measured: the embedded model's greedy decoding 4-6x slower at 2 threads than at 1 on the
    2-core machine while another job ran, ``benchmarks/README.md``).
    """
    forced = os.environ.get("PROD_UNLEARN_THREADS")
    if forced:
        n = max(1, int(forced))
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    st = _THREADS
    current = torch.get_num_threads()
    if st["ceiling"] is None or (st["chosen"] is not None and current != st["chosen"]):
        st["ceiling"] = current  # torch's default, or what the user set since
    ceiling = max(1, min(st["ceiling"], available_cores()))
    if ceiling == 1:
        n = 1
    elif time.monotonic() - st["at"] < DECIDE_EVERY and st["chosen"] is not None:
        n = min(st["chosen"], ceiling)
    else:
        free = free_cores(ceiling)
        n = ceiling if free >= ceiling - 0.5 else max(1, int(free))
        if n > 1 and not _probe_faster(n):
            n = 1
        st["at"] = time.monotonic()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    st["chosen"] = n
    return n
