"""cortex_nb.engine.pool.run_jobs: the same results in worker processes as in this process, one torch thread per
job either way, errors raised here."""
from __future__ import annotations

import operator

import pytest
import torch

from cortex_nb.engine.pool import run_jobs


def test_workers_give_what_this_process_gives_one_thread_each():
    jobs = {(a, b): (a, b) for a in range(3) for b in range(3)}
    pooled = dict(run_jobs(operator.mul, jobs, 2))
    here = dict(run_jobs(operator.mul, jobs, 1))
    assert pooled == here == {k: a * b for k, (a, b) in jobs.items()}
    assert list(here) == list(jobs)                                        # in-process: in the jobs' order
    threads = dict(run_jobs(torch.get_num_threads, {i: () for i in range(3)}, 2))
    assert set(threads.values()) == {1}


def test_in_process_runs_at_the_asked_threads_and_restores_them():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert dict(run_jobs(torch.get_num_threads, {"a": ()}, 1)) == {"a": 1}
        assert dict(run_jobs(torch.get_num_threads, {"a": ()}, 1, threads=None)) == {"a": 2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_jobs_error_is_raised_here(processes):
    with pytest.raises(ZeroDivisionError):
        dict(run_jobs(operator.truediv, {"ok": (1, 1), "bad": (1, 0)}, processes))
