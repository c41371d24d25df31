"""Independent CPU jobs in single-thread worker processes.

The toy models are small: one process on two threads keeps two cores ~1.4x less busy than two single-thread
processes (token selection at width 32, AVX2: 0.100 s/step on 2 threads, 0.133 on 1, two 1-thread processes side by
side 0.142 each). So where a stage has independent jobs (the optimisation runs of notebook 05) it runs them in
``processes`` spawned workers, each single-threaded. A job's result must not depend on the process it runs in, nor
on what runs beside it: with one thread per job it does not (every job also runs at one thread when it runs in this
process, see :func:`run_jobs`).

Workers are spawned (not forked: a fork of a process whose OpenMP runtime has started can hang), import what the job
function needs, and receive the job's arguments by pickle: tensors, modules, profiles.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Iterator

import torch


def run_jobs(fn: Callable[..., Any], jobs: dict[Hashable, tuple], processes: int, *, threads: int | None = 1
             ) -> Iterator[tuple[Hashable, Any]]:
    """``fn(*args)`` for every ``key: args`` of ``jobs``, yielding ``(key, result)`` as each finishes.

    With ``processes > 1`` and more than one job: in ``min(processes, len(jobs))`` spawned worker processes, each at
    one torch thread, in the order they finish. Otherwise: in this process, in ``jobs``' order, at ``threads`` torch
    threads (restored after; None: as set, e.g. on a GPU). ``fn`` must be an importable module-level function; a
    job's exception is raised here, and the jobs not yet started are cancelled.
    """
    if not jobs:
        return
    n = min(int(processes), len(jobs))
    if n <= 1:
        before = torch.get_num_threads()
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            for key, args in jobs.items():
                yield key, fn(*args)
        finally:
            torch.set_num_threads(before)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        futures = {pool.submit(fn, *args): key for key, args in jobs.items()}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
