"""bncourse.lab.distributed.launch: results in rank order, failures and timeouts bounded, nothing left behind."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
import torch
import torch.distributed as dist

from bncourse.lab.distributed import free_port, launch


def _sum_of_ranks(rank: int, world: int, scale: float) -> dict:
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return {"rank": rank, "sum": t.item() * scale, "addr": dist.get_backend()}


def _one_rank_fails(rank: int, world: int) -> None:
    if rank == 1:
        raise ArithmeticError("boom on rank 1")
    dist.barrier()  # rank 0 waits for a peer that will never come


def _sleeps(rank: int, world: int) -> None:
    time.sleep(120)


def test_results_come_back_in_rank_order():
    out = launch(_sum_of_ranks, 2, (10.0,), timeout=90)
    assert [r["rank"] for r in out] == [0, 1]
    assert [r["sum"] for r in out] == [10.0, 10.0]
    assert mp.active_children() == []


def test_a_failing_worker_stops_all_of_them():
    # The parent reports rank 1's error without waiting for rank 0's barrier to time out.
    with pytest.raises(RuntimeError, match="worker 1 of 2 failed:(.|\n)*ArithmeticError: boom on rank 1"):
        launch(_one_rank_fails, 2, timeout=90)
    assert mp.active_children() == []


def test_timeout_kills_every_worker():
    with pytest.raises(TimeoutError, match="2 of 2 workers gave no result within 3"):
        launch(_sleeps, 2, timeout=3)
    assert mp.active_children() == []


def test_free_port_is_on_loopback_and_bad_arguments_are_refused():
    assert 0 < free_port() < 65536
    with pytest.raises(ValueError, match="world_size"):
        launch(_sleeps, 0)
    with pytest.raises(ValueError, match="backend"):
        launch(_sleeps, 1, backend="mpi")
