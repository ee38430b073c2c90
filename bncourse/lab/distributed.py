"""Run a function on W local processes joined by ``torch.distributed``, safely.

:func:`launch` is what the distributed tests and the chapter on batch norm across
devices use: it spawns ``world_size`` fresh Python processes, joins them in a
process group over loopback (``tcp://127.0.0.1:<free port>``, gloo by default),
calls ``fn(rank, world_size, *args)`` in each, and returns the W results in rank
order. It is bounded and leaves nothing behind:

- every collective times out after ``timeout`` seconds (the process group's own
  timeout), and the parent waits at most ``timeout`` seconds for all results;
- if a worker raises, the parent kills the others at once (they may be blocked in
  a collective the failed rank will never join) and raises ``RuntimeError`` with
  the worker's traceback;
- on every exit path (success, error, timeout, KeyboardInterrupt) each worker
  still alive is killed and joined.

``fn`` must be importable by name (a module-level function), since workers are
started with the "spawn" method. Results travel back pickled by value.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

__all__ = ["free_port", "launch"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout: float,
    threads: int,
    fn: Callable[..., Any],
    args: tuple,
    results: Any,
) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout),
        )
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException:  # noqa: BLE001 - report anything to the parent
        results.put((rank, "error", traceback.format_exc()))


def launch(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    *,
    backend: str = "gloo",
    timeout: float = 60.0,
    threads: int = 1,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` new processes; return the results.

    Args:
        fn: a module-level function; it runs after ``init_process_group`` and may use
            any collective. Its return value must pickle (tensors do).
        world_size: number of processes, >= 1.
        args: extra positional arguments (pickled to the workers).
        backend: "gloo" (CPU, or CUDA tensors) or "nccl" (one GPU per rank).
        timeout: seconds for everything (start-up included) and for each collective.
        threads: torch intra-op threads per worker (1 keeps W workers from fighting
            over the cores).

    Returns:
        ``[result of rank 0, ..., result of rank W-1]``.

    Raises:
        RuntimeError: a worker raised (its traceback is in the message) or died.
        TimeoutError: not all results arrived within ``timeout`` seconds.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"expected world_size a positive int, got {world_size!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"expected backend 'gloo' or 'nccl', got {backend!r}")
    if not timeout > 0:
        raise ValueError(f"expected timeout > 0 seconds, got {timeout!r}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, world_size, port, backend, timeout, threads, fn, tuple(args), results),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    deadline = time.monotonic() + timeout
    out: dict[int, Any] = {}
    try:
        for p in procs:
            p.start()
        while len(out) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{world_size - len(out)} of {world_size} workers gave no result within {timeout} s"
                )
            try:
                rank, status, payload = results.get(timeout=min(remaining, 0.5))
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"worker process exited with code {dead[0].exitcode} before reporting a result"
                    ) from None
                continue
            if status == "error":
                raise RuntimeError(f"worker {rank} of {world_size} failed:\n{payload}")
            out[rank] = pickle.loads(payload)  # our own workers' results, not untrusted input
        for p in procs:
            p.join(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(timeout=5.0)
        results.close()
        results.join_thread()
    return [out[r] for r in range(world_size)]

