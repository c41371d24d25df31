"""One plain PyTorch fit loop reused by every model cortex-nb trains.

Paper: appendix A.1.3 ("Training settings") trains the information extractors CE and RE
(A.1.1, A.1.2) with Adam (lr 1e-3, weight decay 1e-4), a StepLR schedule (x0.1 every 20
epochs), cross-entropy, batch size 256, 80 epochs; Table 1 (section 4.2) reports their
top-1/3/5/10 accuracy. The same loop trains the toy-world stand-ins of the paper's evaluators
(section 4.1; see ``evaluators.py``).

What the loop guarantees
------------------------
* **Data**: ``train_data`` / ``val_data`` are either a tuple of tensors ``(x, y)`` (fast path:
  one shuffled permutation per epoch from a seeded ``torch.Generator``, batches by indexing, no
  DataLoader) or a ``torch.utils.data.Dataset`` / ``DataLoader``. ``x`` may be integer token
  indices (uint16 on disk); ``transform(x_batch)`` runs on the device for every batch (train and
  validation), e.g. ``lambda t: F.embedding(t.long(), codebook).permute(0, 3, 1, 2)`` turns
  tokens into token-based embeddings E with one codebook lookup. ``augment`` runs after it on
  training batches only.
* **Checkpoints** (``ckpt_dir``): ``last.pt`` after every epoch (model, optimizer, scheduler,
  history, shuffler / global / CUDA RNG states) and ``best.pt`` (weights of the epoch with the
  highest validation top-1; ties keep the earlier epoch). Writes are atomic
  (:func:`cortex_nb.io.files.atomic_path`). An interrupted run resumes from ``last.pt`` and reaches
  the same final state as an uninterrupted run with the same seed (on the same machine / device).
  A directory holding a finished run (``last.pt`` with ``epoch == cfg.epochs``) is returned
  without training. With ``compact=True`` a finished run keeps only best.pt and a last.pt
  stripped of model, optimiser, scheduler and RNG states (caches keep one copy of the weights).
* **Non-finite losses**: with ``skip_nonfinite`` a batch whose loss is NaN/Inf takes no optimizer
  step and leaves BatchNorm running statistics untouched; the count is the ``skipped`` column.
* **Data parallel** (under ``torchrun``: a process group with world > 1, see
  :mod:`cortex_nb.engine.distributed`; otherwise none of this happens): the model is wrapped in
  DistributedDataParallel after BatchNorm becomes a synchronised BatchNorm (statistics of the
  global batch) and Dropout a global-batch Dropout (the single-process mask, on CPU). Every rank
  draws the same permutation and the same global batches of ``cfg.batch_size`` and keeps its
  contiguous slice of each (:func:`cortex_nb.engine.distributed.batch_slice`: split as evenly as
  possible, the first ``n % world`` ranks take one row more; the final, shorter batch is split
  the same way). Each rank's loss is its sum of per-sample losses times ``world / n_global``, so
  DDP's gradient average is exactly the gradient of the global batch's mean loss, whatever the
  split. A rank may get no rows of a short final batch (it still takes part in the step; checked
  with 3 ranks and a final batch of 2). A Dataset / DataLoader is iterated whole on every rank
  (same order: the shuffler, or the loader's generator / torch's global RNG, is in the same
  state on every rank) and sliced the same way; ``augment`` draws for the rank's rows only, so
  augmented training is data parallel but not draw-for-draw the single-process run (and a
  shuffling DataLoader then needs its own ``generator=``, since the ranks' global RNGs drift
  apart). Validation is sharded (contiguous shares, sums all-reduced; a DataLoader is scored by
  rank 0 alone), so every rank sees the same accuracy and picks the same best epoch. Training
  metrics are all-reduced too; only rank 0 writes ``last.pt`` / ``best.pt``; all ranks resume
  from them, with any number of ranks. The result equals the single-process run up to float
  rounding. A float64 model trains (loss included) in float64: the smoke extractors then agree
  within 3e-12 after 10 Adam steps, on any CPU (``tests/test_distributed.py``). In float32,
  Adam turns rounding-level differences of gradient entries that are zero in exact arithmetic
  (a Linear bias in front of BatchNorm) into steps of +-``lr``, so the weights end up to a few
  ``lr`` apart by an amount that depends on the CPU's kernels and thread count (relative L2
  distance 2e-5 to 5e-3 on the smoke extractors), as does any change of summation order.

Checkpoint files hold only tensors and plain Python containers: ``torch.load(...,
weights_only=True)`` reads them.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..io.files import progress, save_torch
from .fit_state import (FitConfig, cfg_dict, check_resumable, compact_record, finished_weights, load_state,
                        loader_generator, refuse_compact_continuation, rng_state, set_rng_state)
from .inference import (Transform, check_pair, evaluate_sums, is_tensor_pair, iter_batches, loss_logits,
                        n_items, to_device)

__all__ = ["FitConfig", "FitResult", "fit", "HISTORY_COLUMNS"]


#: Columns of :attr:`FitResult.history`, one row per epoch (epochs count from 1).
HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "skipped",
)


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    model: nn.Module  # the trained model, best-validation weights loaded, in eval mode
    history: pd.DataFrame  # one row per epoch, columns HISTORY_COLUMNS (lr: the epoch's lr;
    # seconds: wall time of the epoch incl. validation; skipped: non-finite batches skipped)
    best_epoch: int  # epoch (1-based) whose weights are loaded; argmax of history.val_acc
    best_val_acc: float  # validation top-1 accuracy of that epoch (NaN without validation)
    seconds: float  # wall time spent training, summed over resumed sessions


# --------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------


def _history_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return df.astype({"epoch": int, "skipped": int}) if len(df) else df


def _finish(model, rows, best_state, best_epoch, best_acc, seconds) -> FitResult:
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        model=model,
        history=_history_frame(rows),
        best_epoch=int(best_epoch),
        best_val_acc=float(best_acc),
        seconds=float(seconds),
    )


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    cfg: FitConfig,
    *,
    ckpt_dir: str | os.PathLike | None = None,
    transform: Transform | None = None,
    augment: Transform | None = None,
    resume: bool = True,
    compact: bool = False,
) -> FitResult:
    """Train ``model`` with cross-entropy, Adam and StepLR (paper A.1.3); validate every epoch.

    Args:
        model: any ``nn.Module`` mapping ``transform(x_batch)`` to logits (B, C). Its current
            weights are the starting point (initialise/seed it before calling).
        train_data, val_data: ``(x, y)`` tensors/arrays, a Dataset or a DataLoader.
            ``val_data=None`` trains without validation (best = last epoch).
        cfg: :class:`FitConfig`.
        ckpt_dir: where ``best.pt`` / ``last.pt`` live; ``None`` keeps everything in memory.
        transform: applied on ``cfg.device`` to every batch (train and validation) before the
            model, e.g. a codebook lookup turning token indices into embeddings.
        augment: applied on the device after ``transform`` to training batches only (random
            flips/shifts); draws from torch's global RNG, which checkpoints save.
        resume: continue from ``ckpt_dir/last.pt`` when present (False: start over and
            overwrite).
        compact: once the run has finished, keep only what reusing it needs: best.pt (weights)
            and a last.pt without model, optimiser, scheduler and RNG states (a few KiB
            against 3x the weights with Adam). An interrupted run still resumes (last.pt is
            complete until the final epoch), but a compacted run cannot later be continued to
            more epochs. A finished full last.pt met with ``compact=True`` is compacted then.

    Returns:
        :class:`FitResult` with the best-validation weights loaded into ``model``.
    """
    if cfg.epochs < 1:
        raise ValueError(f"cfg.epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"cfg.batch_size must be >= 1, got {cfg.batch_size}")
    if n_items(train_data) == 0:
        raise ValueError("train_data is empty")
    if is_tensor_pair(train_data):
        train_data = check_pair(train_data, "train_data")
    if val_data is not None and is_tensor_pair(val_data):
        val_data = check_pair(val_data, "val_data")

    from . import distributed

    device = torch.device(cfg.device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    shuffler = torch.Generator().manual_seed(cfg.seed)
    world = distributed.world()
    main = distributed.is_main()

    ckpt = Path(ckpt_dir) if ckpt_dir is not None else None
    last_path = ckpt / "last.pt" if ckpt else None
    best_path = ckpt / "best.pt" if ckpt else None

    rows: list[dict] = []
    start_epoch = 0
    best_acc, best_epoch, best_state = -math.inf, 0, None  # best_acc NaN: no validation
    seconds_before = 0.0

    if last_path is not None and resume and last_path.exists():
        state = load_state(last_path)
        check_resumable(state["cfg"], cfg, last_path)
        rows = list(state["history"])
        best_acc, best_epoch = state["best_val_acc"], state["best_epoch"]
        seconds_before = state["seconds"]
        if state["epoch"] >= cfg.epochs:
            if state["epoch"] > cfg.epochs:
                warnings.warn(
                    f"{last_path} holds {state['epoch']} epochs, more than cfg.epochs="
                    f"{cfg.epochs}; returning the finished run as it is",
                    stacklevel=2,
                )
            weights = finished_weights(best_path, state, last_path)
            if compact and main and "optimizer" in state:  # a run finished before compaction existed
                save_torch(compact_record(state), last_path)
            return _finish(model, rows, weights, best_epoch, best_acc, seconds_before)
        if state.get("compact"):
            refuse_compact_continuation(state, cfg, last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], shuffler, device, loader_generator(train_data))
        start_epoch = state["epoch"]
        if best_path.exists():
            best_state = load_state(best_path)["model"]
    else:
        if last_path is not None and not resume and main:  # start over: drop the old run's files
            for f in (last_path, best_path):
                f.unlink(missing_ok=True)
        torch.manual_seed(cfg.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed)
    # every rank has read the checkpoints before rank 0 writes new ones
    distributed.barrier()

    # data parallel (torchrun, world > 1): DDP over synchronised BatchNorm and global-batch
    # Dropout; ``net`` is what training batches go through, ``model`` stays the plain module
    ddp = distributed.prepare_ddp(model, device) if world > 1 else None
    net = ddp.net if ddp is not None else model
    # validation: each rank scores a contiguous share, the sums are all-reduced
    val_shard = _shard(val_data) if ddp is not None else val_data

    # buffers a training forward pass changes: running statistics of BatchNorm-like layers
    buffers = [
        b
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
        for b in m.buffers(recurse=False)
    ]
    n_train = n_items(train_data)
    steps = None if n_train is None else math.ceil(n_train / cfg.batch_size)
    if steps is not None and cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)

    epoch_bar = progress(
        range(start_epoch, cfg.epochs),
        total=cfg.epochs,
        initial=start_epoch,
        desc=f"fit {type(model).__name__}",
        enabled=cfg.progress and main,
        unit="epoch",
    )
    t_session = time.perf_counter()
    try:
        for epoch_idx in epoch_bar:
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            net.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            seen, skipped = 0, 0
            batch_bar = progress(
                total=steps, desc=f"epoch {epoch_idx + 1}", leave=False,
                enabled=cfg.progress and main, unit="batch", mininterval=1.0,
            )
            for xb, yb in iter_batches(
                train_data, cfg.batch_size, shuffle=True, generator=shuffler,
                max_steps=cfg.max_steps_per_epoch,
            ):
                n_global = len(yb)
                if ddp is not None:  # same global batch on every rank: keep this rank's rows
                    lo, hi = distributed.batch_slice(n_global)
                    xb, yb = xb[lo:hi], yb[lo:hi]
                    ddp.set_rows(n_global, lo)
                xb, yb = to_device(xb, device), to_device(yb, device).long()
                if transform is not None:
                    xb = transform(xb)
                if augment is not None:
                    xb = augment(xb)
                saved_buffers = (
                    [b.detach().clone() for b in buffers] if cfg.skip_nonfinite else None
                )
                logits = net(xb)
                if ddp is None:
                    loss = F.cross_entropy(loss_logits(logits), yb)
                    batch_loss = loss.detach()
                else:
                    # DDP averages gradients over ranks: scale this rank's loss sum by world / n
                    # so the average is the gradient of the global batch's mean loss, whatever
                    # the split; the global mean (for the non-finite check) is all-reduced
                    local_sum = F.cross_entropy(loss_logits(logits), yb, reduction="sum")
                    loss = local_sum * (world / n_global)
                    # (a copy: all_reduce_sum works in place, and .double() of float64 is no copy)
                    batch_loss = distributed.all_reduce_sum(
                        local_sum.detach().to(torch.float64, copy=True)) / n_global
                if cfg.skip_nonfinite and not torch.isfinite(batch_loss):
                    if ddp is not None:  # DDP expects a backward after each forward
                        (loss * 0.0).backward()
                    with torch.no_grad():  # undo BatchNorm running-statistics updates
                        for b, s in zip(buffers, saved_buffers):
                            b.copy_(s)
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    batch_bar.update(1)
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    if ddp is None:
                        loss_sum += loss.detach().double() * len(yb)
                    else:
                        loss_sum += local_sum.detach().double()
                    correct += (logits.argmax(1) == yb).sum()
                seen += len(yb)
                batch_bar.update(1)
                if cfg.progress and batch_bar.n % 10 == 0:
                    batch_bar.set_postfix(loss=f"{float(batch_loss):.3f}", refresh=False)
            batch_bar.close()
            scheduler.step()

            if ddp is not None:  # epoch totals over all ranks
                tot = distributed.all_reduce_sum(
                    torch.stack([loss_sum.cpu(), correct.cpu().double(), torch.tensor(float(seen), dtype=torch.float64)])
                    .to(device))
                loss_sum, correct, seen = tot[0], int(tot[1]), int(tot[2])
            train_loss = float(loss_sum) / seen if seen else math.nan
            train_acc = int(correct) / seen if seen else math.nan
            if val_data is not None:
                v_loss, v_correct, v_n = evaluate_sums(
                    model, val_shard, transform, cfg.batch_size, device
                ) if val_shard is not None else (0.0, 0, 0)
                if ddp is not None:
                    tot = distributed.all_reduce_sum(
                        torch.tensor([v_loss, v_correct, v_n], dtype=torch.float64, device=device))
                    v_loss, v_correct, v_n = float(tot[0]), int(tot[1]), int(tot[2])
                if v_n == 0:
                    raise ValueError("evaluate got no items")
                val_loss, val_acc = v_loss / v_n, v_correct / v_n
            else:
                val_loss, val_acc = math.nan, math.nan
            epoch = epoch_idx + 1
            rows.append(
                dict(
                    epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                    val_acc=val_acc, lr=lr, seconds=time.perf_counter() - t0, skipped=skipped,
                )
            )
            # no validation: the last epoch is the best; ties keep the earlier epoch
            # (val_acc is the all-reduced count, so every rank makes the same choice)
            improved = val_data is None or math.isnan(best_acc) or val_acc > best_acc
            if improved:
                best_acc, best_epoch = val_acc, epoch
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                if best_path is not None and main:
                    save_torch({"model": best_state, "epoch": epoch, "val_acc": val_acc}, best_path)
            elapsed = seconds_before + time.perf_counter() - t_session
            if last_path is not None and main:
                record = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "history": rows,
                    "best_val_acc": best_acc,
                    "best_epoch": best_epoch,
                    "rng": rng_state(shuffler, device, loader_generator(train_data)),
                    "cfg": cfg_dict(cfg),
                    "seconds": elapsed,
                }
                # the final epoch of a compact run: best.pt (written above) holds the weights
                done = compact and epoch == cfg.epochs and best_path.exists()
                save_torch(compact_record(record) if done else record, last_path)
            epoch_bar.set_postfix(
                loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}", val_acc=f"{val_acc:.3f}",
                refresh=False,
            )
            distributed.fault_point("epoch")
    finally:
        if ddp is not None:
            ddp.restore()
    epoch_bar.close()
    seconds = seconds_before + time.perf_counter() - t_session
    distributed.barrier()  # rank 0 has written the final files before any rank returns (and reads them)
    return _finish(model, rows, best_state, best_epoch, best_acc, seconds)


def _shard(data: Any) -> Any:
    """This rank's contiguous share of validation ``data`` (tensor pair or Dataset); a
    DataLoader is scored whole by rank 0 (``None`` on the other ranks)."""
    from . import distributed

    if data is None:
        return None
    if isinstance(data, DataLoader):
        return data if distributed.is_main() else None
    lo, hi = distributed.batch_slice(n_items(data))
    if is_tensor_pair(data):
        return data[0][lo:hi], data[1][lo:hi]
    return torch.utils.data.Subset(data, range(lo, hi))
