"""Run a function on W local processes joined by ``torch.distributed``, safely.

:func:`launch` is what the distributed tests and the chapter on batch norm across
devices use: it spawns ``world_size`` fresh Python processes, joins them in a
process group over loopback (``tcp://127.0.0.1:<free port>``, gloo by default),
calls ``fn(rank, world_size, *args)`` in each, and returns the W results in rank
order. It is bounded and leaves nothing behind:

- every collective times out after ``timeout`` seconds (the process group's own
  timeout), and the parent waits at most ``timeout`` seconds for all results;
- if a worker raises, the parent kills the others (they may be blocked in a
  collective the failed rank will never join) and raises ``RuntimeError`` with the
  worker's traceback, and those of peers that failed in the next 2 seconds;
- on every exit path (success, error, timeout, KeyboardInterrupt) each worker
  still alive is killed and joined.

``fn`` must be importable by name (a module-level function), since workers are
started with the "spawn" method. Results travel back pickled by value.

Data-parallel training on the digits (what the chapter runs in the workers):
:func:`allreduce_gradients` and :func:`broadcast_buffers` are the two things
``DistributedDataParallel`` does around a step (gradients averaged in one
bucket; rank 0's buffers broadcast before the forward pass), written out so
that a worker needs neither DDP's start-up (it imports the compiler stack,
seconds per process) nor anything hidden; the tests check that DDP itself
gives the same training as one process on the global batch.
:func:`data_parallel_worker` trains a digits classifier with per-device BN,
``SyncBatchNorm`` or GroupNorm, each rank on its slice of the same global
batches that ``bncourse.lab.training.train`` would draw, and measures time per
step and the collectives it calls.
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

__all__ = [
    "free_port",
    "launch",
    "allreduce_gradients",
    "broadcast_buffers",
    "global_batches",
    "data_parallel_worker",
    "sync_bn_bytes_per_step",
    "gradient_bytes_per_step",
]


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
        except BaseException:  # noqa: BLE001 - report anything to the parent
            # Before leaving the group: peers then fail too ("connection closed"), and the
            # root cause should reach the parent first.
            results.put((rank, "error", traceback.format_exc()))
            return
        finally:
            dist.destroy_process_group()
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException:  # noqa: BLE001 - e.g. init_process_group failed
        results.put((rank, "error", traceback.format_exc()))


def _failures(rank: int, message: str, world_size: int, results: Any, grace: float = 2.0) -> str:
    """The first failure, and any other that arrives within ``grace`` seconds (a failure on
    one rank usually makes its peers fail too; all are reported, in order of arrival)."""
    failures = [f"worker {rank} of {world_size} failed:\n{message}"]
    deadline = time.monotonic() + grace
    while len(failures) < world_size and time.monotonic() < deadline:
        try:
            other, status, payload = results.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue_module.Empty:
            break
        if status == "error":
            failures.append(f"worker {other} of {world_size} failed too:\n{payload}")
    return "\n".join(failures)


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
        RuntimeError: a worker raised (its traceback is in the message, with those of the
            workers that failed within the next 2 seconds) or died.
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
                raise RuntimeError(_failures(rank, payload, world_size, results))
            out[rank] = pickle.loads(payload)  # our own workers' results, not untrusted input
        for p in procs:
            p.join(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            if p.pid is not None:  # started
                p.join(timeout=5.0)
        results.close()
        results.join_thread()
    return [out[r] for r in range(world_size)]



# -- Data-parallel training on the digits -----------------------------------------------


def allreduce_gradients(model: "torch.nn.Module") -> None:
    """Average every parameter's ``.grad`` over the ranks, in one flat all-reduce (one DDP bucket)."""
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(model: "torch.nn.Module") -> None:
    """Copy rank 0's buffers (running statistics) to every rank, as DDP does before each forward."""
    import torch
    import torch.distributed as dist

    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.broadcast(flat, src=0)
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def global_batches(n: int, batch_size: int, steps: int, seed: int) -> list["torch.Tensor"]:
    """The row indices of each step's global batch, exactly as ``lab.training.train`` draws them."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    out, order = [], torch.randperm(n, generator=gen)
    for step in range(1, steps + 1):
        k = (step - 1) % per_epoch
        if k == 0 and step > 1:
            order = torch.randperm(n, generator=gen)
        out.append(order[k * batch_size : (k + 1) * batch_size])
    return out


def _build(norm: str, seed: int, arch: str):
    from ..nn import SyncBatchNorm
    from .across_devices import build_model

    if norm == "sync":
        return SyncBatchNorm.convert_sync_batchnorm(build_model("bn", seed, arch=arch))
    return build_model(norm, seed, arch=arch)


def data_parallel_worker(rank: int, world_size: int, runs: list[dict], x_train, y_train) -> list[dict]:
    """Train, on this rank, each run of ``runs``; return what each measured.

    Each run is a dict with ``norm`` ("bn": per-device BN, "sync": SyncBatchNorm,
    "gn": GroupNorm), ``arch`` ("mlp" or "cnn", see ``lab.across_devices.build_model``),
    ``per_device`` (rows per rank per step), ``steps``, ``seed``, ``lr`` (plain SGD) and
    optionally ``dtype`` ("float64" for exact comparisons; float32 by default). The global batch is ``per_device * world_size`` rows
    drawn as ``lab.training.train`` draws them; rank r takes rows
    ``[r * per_device, (r + 1) * per_device)`` of it. Each step: broadcast rank 0's
    buffers, forward, loss (mean over the local rows: averaging the gradients then
    gives the gradient of the global mean), backward, :func:`allreduce_gradients`,
    SGD update.

    Returns, per run: ``params`` (the final parameters, on rank 0 only),
    ``step_seconds`` (wall time of each step on this rank) and ``collectives``
    (calls per step, by name, counted on the last step).
    """
    import time

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    x_all, y_all = torch.as_tensor(x_train), torch.as_tensor(y_train)
    results = []
    for run in runs:
        model = _build(run["norm"], run["seed"], run.get("arch", "mlp"))
        x_run = x_all
        if run.get("dtype") == "float64":
            model, x_run = model.double(), x_all.double()
        opt = torch.optim.SGD(model.parameters(), lr=run["lr"])
        b = run["per_device"]
        batches = global_batches(len(x_all), b * world_size, run["steps"], run["seed"])
        times, counts = [], {}
        for step, idx in enumerate(batches):
            local = idx[rank * b : (rank + 1) * b]
            dist.barrier()  # every rank starts the step together (not counted, not timed)
            with _CountCollectives(counts if step == len(batches) - 1 else None):
                start = time.perf_counter()
                broadcast_buffers(model)
                loss = F.cross_entropy(model(x_run[local]), y_all[local])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                allreduce_gradients(model)
                opt.step()
                times.append(time.perf_counter() - start)
        results.append({
            "params": {k: v.detach().clone() for k, v in model.named_parameters()} if rank == 0 else None,
            "step_seconds": times,
            "collectives": counts,
        })
    return results


class _CountCollectives:
    """While active (``counts`` not None), count calls of the collectives used here."""

    NAMES = ("all_reduce", "broadcast", "all_gather", "barrier")

    def __init__(self, counts: dict | None) -> None:
        self.counts, self.saved = counts, {}

    def __enter__(self):
        import torch.distributed as dist

        if self.counts is None:
            return self
        for name in self.NAMES:
            original = self.saved[name] = getattr(dist, name)

            def counted(*a, _name=name, _f=original, **k):
                self.counts[_name] = self.counts.get(_name, 0) + 1
                return _f(*a, **k)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc):
        import torch.distributed as dist

        for name, f in self.saved.items():
            setattr(dist, name, f)


def gradient_bytes_per_step(model: "torch.nn.Module") -> int:
    """Bytes each rank all-reduces for the gradients per step: every parameter, in its dtype."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def sync_bn_bytes_per_step(model: "torch.nn.Module") -> int:
    """Extra bytes each rank all-reduces per step for ``SyncBatchNorm`` layers.

    Per layer with C channels: forward ``2C + 2`` float64 values (count, bad-input
    flag, the two moment sums); backward ``2C`` values of the statistics dtype
    (float32 here, the parameters' dtype).
    """
    from ..nn import SyncBatchNorm

    total = 0
    for m in model.modules():
        if isinstance(m, SyncBatchNorm):
            c = m.num_features
            stat_bytes = 8 if m.running_mean is not None and m.running_mean.dtype.itemsize == 8 else 4
            total += (2 * c + 2) * 8 + 2 * c * stat_bytes
    return total


def torch_sync_batchnorm_on_cpu(rank: int, world_size: int) -> str:
    """(A worker for :func:`launch`.) What ``torch.nn.SyncBatchNorm`` says to a CPU batch in a
    process group of ``world_size`` > 1; "" if it accepts it."""
    import torch

    layer = torch.nn.SyncBatchNorm(3)
    try:
        layer(torch.randn(4, 3))
    except (RuntimeError, ValueError) as err:
        return str(err)
    return ""
