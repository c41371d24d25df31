"""Data parallelism under ``torchrun``: process-group helpers shared by every stage.

Run any stage with N processes on one machine (CPU: gloo; a CUDA profile: nccl, one GPU per
process, ``cuda:LOCAL_RANK``)::

    torchrun --standalone --nproc-per-node N -m cortex_nb STAGE --profile P [--set k=v ...]

(``python -m torch.distributed.run`` is the same program.) Without torchrun nothing changes:
there is no process group, :func:`world` is 1, :func:`rank` 0, :func:`barrier` does nothing and
every stage runs exactly as a single process.

What N processes do, stage by stage
-----------------------------------
* ``generate`` (:meth:`cortex_nb.io.store.TokenStore.generate`) and ``tsv``
  (:func:`cortex_nb.io.store.chunked_array`): rank 0 inspects the split and broadcasts the list of
  missing shards (chunks); rank r makes the missing ones at positions p with p % N == r
  (:func:`owned`); a barrier; rank 0 concatenates and writes the final arrays + meta.json
  (atomic); a barrier; every rank opens the result. Shards are seeded by (seed, split, index)
  and TSV chunks by (seed, chunk start), so the result does not depend on N or on who made
  what: byte-identical to a single process (same device, same kernels). A rank that dies leaves
  every shard it finished; rerunning with any N (1 included) makes only the missing ones.
* ``train-extractors`` (:func:`cortex_nb.engine.train.fit`): DistributedDataParallel. Every rank draws
  the same global permutation and takes its contiguous slice of each global batch
  (:func:`batch_slice`); BatchNorm becomes a synchronised BatchNorm (``nn.SyncBatchNorm`` on
  CUDA; :class:`GlobalBatchNorm`, its CPU/gloo equivalent, elsewhere) and Dropout draws the mask
  of the whole global batch and keeps its rows (:class:`GlobalBatchDropout`), so a step equals
  the single-process step on the same global batch up to float rounding. Only rank 0 writes
  checkpoints.
* ``vqgm``, ``evaluators`` and every cache that one process builds (:func:`main_first`): rank 0
  builds it as a single process (:func:`local`) while the others wait at a barrier, then the
  others load it.
* Tables, figures and printed summaries: rank 0 only.

Threads: with N processes on a machine (``LOCAL_WORLD_SIZE``) each uses
``max(1, cfg.threads // N)`` torch threads (:func:`threads_per_process`), so N processes do not
oversubscribe the cores that one process was given.

Failures: torchrun stops the other ranks when one exits with an error; every unit of work is
written atomically, so what was finished survives and a rerun resumes. The process group's
timeout (ranks waiting at a barrier while rank 0 builds a cache) is ``CORTEX_DIST_TIMEOUT_S``
seconds (default 6 h).

Test hooks (read only by :func:`fault_point`): ``CORTEX_FAULT_AFTER_SHARDS=k`` makes a process
raise after it has written k token-store shards or TSV chunks; ``CORTEX_FAULT_AFTER_EPOCHS=k``
after k training epochs (checkpoint written). ``CORTEX_FAULT_RANK=r`` limits the fault to rank
r (default: every rank). They exist to test that a crashed rank leaves resumable state.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "init_from_env", "destroy", "session", "launched", "active", "rank", "world", "local_rank",
    "local_world", "is_main", "barrier", "owned", "batch_slice", "broadcast_object",
    "all_reduce_sum", "local", "main_first", "threads_per_process", "fault_point",
    "GlobalBatchNorm", "GlobalBatchDropout", "prepare_ddp",
]

T = TypeVar("T")

_SUSPENDED = 0  # > 0 inside local(): this process acts alone
_FAULT_COUNTS: dict[str, int] = {}


# --------------------------------------------------------------------------------------
# the process group
# --------------------------------------------------------------------------------------


def launched() -> bool:
    """True when started by torchrun with more than one process (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> bool:
    """Initialise the default process group from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT). Backend: nccl when ``device`` is CUDA (and the CUDA device is
    set to LOCAL_RANK), gloo otherwise. Returns True when a group is (already) initialised; does
    nothing and returns False without torchrun or with a single process."""
    if not launched() or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    cuda = str(device).startswith("cuda")
    if cuda:
        lr, n_gpu = local_rank(), torch.cuda.device_count()
        if lr >= n_gpu:
            raise RuntimeError(f"torchrun started local rank {lr} but only {n_gpu} CUDA device(s) are visible: "
                               f"use --nproc-per-node {n_gpu} or fewer (one GPU per process), or device=cpu")
        torch.cuda.set_device(lr)
    timeout = datetime.timedelta(seconds=float(os.environ.get("CORTEX_DIST_TIMEOUT_S", "21600")))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    return True


def destroy() -> None:
    """Destroy the default process group when there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str = "cpu") -> Iterator[bool]:
    """``with session(cfg.device): ...`` — :func:`init_from_env` on entry, :func:`destroy` on exit
    (also on errors). Yields whether a process group is active."""
    try:
        yield init_from_env(device)
    finally:
        destroy()


def active() -> bool:
    """True when this process is one of several ranks of an initialised group (and not inside
    :func:`local`)."""
    return (_SUSPENDED == 0 and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def rank() -> int:
    """This process's rank (0 without a group or inside :func:`local`)."""
    return dist.get_rank() if active() else 0


def world() -> int:
    """Number of ranks (1 without a group or inside :func:`local`)."""
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """torchrun's LOCAL_RANK (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world() -> int:
    """Processes on this machine: torchrun's LOCAL_WORLD_SIZE (1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def is_main() -> bool:
    """True on rank 0 (and always without a group): the rank that writes tables and final files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def threads_per_process(threads: int) -> int:
    """``max(1, threads // N)`` with N processes on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    return max(1, int(threads) // local_world())


# --------------------------------------------------------------------------------------
# splitting work
# --------------------------------------------------------------------------------------


def owned(indices: Sequence[T]) -> list[T]:
    """This rank's items of ``indices``: those at positions p with p % world == rank. Over the
    ranks the slices are disjoint and together complete (every item once)."""
    return list(indices)[rank()::world()]


def batch_slice(n: int) -> tuple[int, int]:
    """``(lo, hi)``: this rank's contiguous rows of a global batch of ``n`` rows. Split as evenly
    as possible: the first ``n % world`` ranks get one row more (``numpy.array_split``); when
    ``n < world`` the last ranks get none (they still take part in the step)."""
    w, r = world(), rank()
    base, extra = divmod(int(n), w)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a collective: every rank must call it)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over the ranks (in place, also returned; no autograd). No-op with one rank."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside, this process acts as if it were alone (world 1, rank 0, barriers do nothing):
    for work that one rank does on behalf of all (see :func:`main_first`)."""
    global _SUSPENDED
    _SUSPENDED += 1
    try:
        yield
    finally:
        _SUSPENDED -= 1


def main_first(build: Callable[[], T]) -> T:
    """``build()`` on rank 0 first (as a single process), then, after a barrier, on the other
    ranks — for builders that cache their result, so the others only load it. One process:
    just ``build()``."""
    if not active():
        return build()
    out = None
    if is_main():
        with local():
            out = build()
    barrier()
    if not is_main():
        with local():
            out = build()
    return out


def fault_point(kind: str = "shard") -> None:
    """Test hook (the only reader of the CORTEX_FAULT_* variables, see the module docstring):
    count one finished unit of ``kind`` ('shard': token-store shard or TSV chunk; 'epoch') and
    raise RuntimeError when ``CORTEX_FAULT_AFTER_<KIND>S`` of them are done on the targeted rank."""
    limit = os.environ.get(f"CORTEX_FAULT_AFTER_{kind.upper()}S")
    if not limit:
        return
    target = os.environ.get("CORTEX_FAULT_RANK")
    r = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if target not in (None, "") and int(target) != r:
        return
    _FAULT_COUNTS[kind] = _FAULT_COUNTS.get(kind, 0) + 1
    if _FAULT_COUNTS[kind] >= int(limit):
        raise RuntimeError(f"test hook CORTEX_FAULT_AFTER_{kind.upper()}S={limit}: rank {r} fails after "
                           f"{_FAULT_COUNTS[kind]} {kind}(s)")


# --------------------------------------------------------------------------------------
# DistributedDataParallel with single-process semantics
# --------------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients (as
    ``nn.SyncBatchNorm``'s backward): each rank's loss depends on every rank's activations."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        g = g.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks together),
    differentiably (gradients flow through the all-reduced statistics as in ``nn.SyncBatchNorm``).
    ``nn.SyncBatchNorm`` refuses CPU tensors; this works on any backend (gloo on CPU). Statistics
    are accumulated in float64, as the CPU BatchNorm kernel does. Outside training, with one rank,
    or without batch statistics it is the plain BatchNorm. Same parameters and buffers (names
    included) as the BatchNorm it replaces."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and active()):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply

        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, C] + [1] * (x.dim() - 2)
        xd = x.double()
        count = x.new_full((1,), x.numel() // C if C else 0, dtype=torch.float64)
        s = all_reduce(torch.cat([xd.sum(dims), count]))  # sum over ranks, autograd-aware
        n = s[C]
        mean = s[:C] / n
        centred = xd - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n  # biased, used to normalise
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.detach().to(self.running_mean.dtype), alpha=f)
                unbiased = var.detach() * (n / (n - 1)) if float(n) > 1 else var.detach()
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        y = (centred * torch.rsqrt(var + self.eps).view(shape)).to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class GlobalBatchDropout(nn.Module):
    """Dropout that draws the mask of the whole global batch from torch's global RNG (identical
    on every rank) and applies this rank's rows. On CPU that is bit-for-bit the mask a single
    process draws for the same global batch (``torch.dropout`` on CPU is ``x * bernoulli_(1-p) /
    (1-p)`` over the input's shape), so DDP keeps the single-process trajectory. CUDA's fused
    dropout kernel draws differently: there it is an equally valid dropout, not the same mask.
    :func:`prepare_ddp` sets ``rows = (global_n, lo)`` before every training forward."""

    def __init__(self, p: float, inplace: bool = False):
        super().__init__()
        self.p, self.inplace = float(p), inplace
        self.rows: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.rows is None:
            return F.dropout(x, self.p, self.training, self.inplace)
        n, lo = self.rows
        if self.p == 1.0:
            return x * 0.0
        noise = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        noise.div_(1 - self.p)
        return x * noise[lo:lo + len(x)]


def _swap(model: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> list:
    """Replace every submodule m for which make(m) returns a module; return the undo list."""
    undo = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = make(child)
            if new is not None:
                setattr(parent, name, new)
                undo.append((parent, name, child))
    return undo


def _sync_bn(bn: nn.Module, cuda: bool) -> nn.Module | None:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or isinstance(bn, (nn.SyncBatchNorm, GlobalBatchNorm)):
        return None
    cls = nn.SyncBatchNorm if cuda else GlobalBatchNorm
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:  # share parameters and buffers: training updates the original module's tensors
        new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def _global_dropout(m: nn.Module) -> nn.Module | None:
    if type(m) is not nn.Dropout:
        return None
    new = GlobalBatchDropout(m.p, m.inplace)
    new.train(m.training)
    return new


class DDPModel:
    """What :func:`prepare_ddp` returns: ``.net`` (the DDP wrapper to train through), ``.set_rows``
    (call before each training forward) and ``.restore()`` (put the original layers back)."""

    def __init__(self, model: nn.Module, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel as DDP

        cuda = device.type == "cuda"
        self.model = model
        self._undo = _swap(model, lambda m: _sync_bn(m, cuda)) + _swap(model, _global_dropout)
        self.dropouts = [m for m in model.modules() if isinstance(m, GlobalBatchDropout)]
        self.net = DDP(model, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
                       if cuda else None)

    def set_rows(self, n: int, lo: int) -> None:
        for d in self.dropouts:
            d.rows = (int(n), int(lo))

    def restore(self) -> None:
        for parent, name, child in reversed(self._undo):
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)
        self._undo = []


def prepare_ddp(model: nn.Module, device: torch.device) -> DDPModel:
    """Convert ``model`` in place for data-parallel training with single-process semantics
    (BatchNorm -> synchronised BatchNorm sharing the same tensors, Dropout -> global-batch
    Dropout) and wrap it in DistributedDataParallel. ``restore()`` undoes the conversion; the
    weights trained meanwhile are in the original modules (shared parameters and buffers)."""
    return DDPModel(model, torch.device(device))
