"""Headless stages: ``python -m cortex_nb STAGE --profile P [--set key=value ...]``.

The notebooks call the same stage functions (cortex_nb.stages); this entry point is for
scripted runs and GPUs. Stages:

  vqgm        train (toy) or load (imagenet) the VQGM and print its quality report
  evaluators  train (toy) or load (imagenet) the evaluators
  generate    sample the synthetic train/val/test token stores (resumable)
  train-extractors  train CE and RE on the token stores (resumable) and write Table 1
  tsv         token saliency values (TSV) of --split (default: train and test) under every
              extractor of the profile (resumable; cached under results/P/cache/tsv)

Data parallel, N processes on one machine (gloo on CPU, nccl with one GPU per process on CUDA):

  torchrun --standalone --nproc-per-node N -m cortex_nb STAGE --profile P
  (or: python -m torch.distributed.run --standalone --nproc-per-node N -m cortex_nb ...)

generate and tsv split their shards / chunks between the ranks, train-extractors trains with
DistributedDataParallel (each rank a slice of every global batch of extractors.batch_size);
vqgm and evaluators are built by rank 0 while the others wait. Results equal a single process's
(token stores and TSVs exactly; extractor weights up to float rounding). Rank 0 writes tables and
final files and prints; each process uses max(1, threads // N) torch threads. A crashed run
resumes when rerun, with any N. Details: the docstring of cortex_nb.distributed.

Errors you can fix (a bad profile value, a missing or damaged file, a results directory that
cannot be written) are printed as one line plus the fix, exit status 2; --debug shows the
traceback. The results directory is checked for writing before any work starts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import yaml

STAGES = ("vqgm", "evaluators", "generate", "train-extractors", "tsv")
SPLITS = ("train", "val", "test")


def _parse_sets(items: list[str]) -> dict:
    from .errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}", fix="e.g. --set data.n_train=100")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({e.problem})",
                            fix="quote strings, write lists as [1, 2]") from None
    return out


def parser() -> argparse.ArgumentParser:
    from .config import PROFILES

    ap = argparse.ArgumentParser(prog="python -m cortex_nb", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} (default $CORTEX_PROFILE or toy)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile key, e.g. --set data.n_train=100 (repeatable)")
    ap.add_argument("--split", action="extend", nargs="+", choices=SPLITS, default=None,
                    help="tsv: the splits to compute (default: train test)")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one stage; a :class:`~cortex_nb.errors.UserError` becomes one line plus its fix on
    stderr and exit status 2 (with ``--debug``, the traceback)."""
    from .errors import UserError

    args = parser().parse_args(argv)
    try:
        return _main(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from . import distributed
    from .config import ensure_writable, load_profile

    cfg = load_profile(args.profile, **_parse_sets(args.set))
    ensure_writable(cfg)
    with distributed.session(cfg.device):
        t0 = time.perf_counter()
        summary = _run(args, cfg)
        distributed.barrier()
        if distributed.is_main():
            n = distributed.world()
            print(f"{args.stage} ({cfg.name}): {summary}; {n} process{'es' if n > 1 else ''}, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 0


def _run(args, cfg) -> str:
    """Run one stage on every rank; what only one process should do (printing, tables,
    figures) runs on rank 0 alone (``distributed.local``). Returns the one-line summary."""
    from . import distributed, stages

    main = distributed.is_main()
    if args.stage in ("vqgm", "evaluators"):  # one process builds, the others wait
        summary = ""
        if main:
            with distributed.local():
                if args.stage == "vqgm":
                    vqgm = stages.get_vqgm(cfg)
                    report = {"K": vqgm.K, "d": vqgm.d, "m": vqgm.m, "fingerprint": vqgm.fingerprint()}
                    if cfg.vqgm.source == "toy":
                        report = stages.vqgm_report(cfg, vqgm, stages.get_evaluators(cfg))
                    print(json.dumps(report, indent=2))
                    summary = f"VQGM K={vqgm.K} m={vqgm.m} fingerprint {vqgm.fingerprint()}"
                else:
                    evs = stages.get_evaluators(cfg)
                    print("evaluators:", ", ".join(evs))
                    summary = f"{len(evs)} evaluators"
        return summary

    vqgm = stages.get_vqgm(cfg)
    stores = stages.generate_dataset(cfg, vqgm)
    if args.stage == "generate":
        if main:
            with distributed.local():
                test = stores["test"]
                evs = stages.get_evaluators(cfg)
                print(stages.evaluator_scores(evs, test.images, test.labels).to_string(index=False))
        return "token stores " + ", ".join(f"{k} {len(v)}" for k, v in stores.items())

    results = stages.get_extractors(cfg, vqgm)
    if args.stage == "train-extractors":
        if main:
            with distributed.local():
                from . import reports

                reports.training_curves_figure(cfg, results)
                acc = stages.extractor_accuracy(cfg, results, vqgm)
                print(reports.table1(cfg, acc).to_string(index=False))
        return "extractors " + ", ".join(f"{a} (best epoch {r.best_epoch}, val acc {r.best_val_acc:.3f})"
                                         for a, r in results.items())

    # tsv
    from .evaluation import get_tsv

    splits = list(dict.fromkeys(args.split or ["train", "test"]))
    done = []
    for arch, res in results.items():
        for split in splits:
            tsv = get_tsv(cfg, arch, res.model, vqgm, split)
            done.append(f"{arch}/{split} {tuple(tsv.shape)}")
    return "TSV " + ", ".join(done)


if __name__ == "__main__":
    sys.exit(main())
