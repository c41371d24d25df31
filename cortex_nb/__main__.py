"""Headless runs: ``python -m cortex_nb COMMAND --profile P [--set key=value ...]``.

Every notebook / paper section that writes a table or figure has a command, and the command calls
the same section function the notebook's steps add up to (``cortex_nb.pipeline.sNN_*.run``), so a
GPU run needs no Jupyter. Commands:

  vqgm              train (toy) or load (imagenet) the VQGM and print its quality report
  evaluators        train (toy) or load (imagenet) the evaluators
  vqgm-report       notebook 00: toy world, tokenizer quality table, reconstructions (toy),
                    prior samples and how the evaluators score them, the toy evaluators' table
  generate          notebook 01: sample the synthetic train/val/test token stores (resumable),
                    then the dataset table, the generated test images and their accuracy table
  train-extractors  notebook 02: train CE and RE on the token stores (resumable), Table 1, curves
  tsv               token saliency values (TSV) of --split (default: train and test) under every
                    extractor of the profile (resumable; cached under results/P/cache/tsv)
  fig3              notebook 03: Fig. 3 (image level, both mask modes, random baseline), Fig. 2, 5
  table2            notebook 04: T*_concept, Table 2 (concept level), ground-truth localisation
  table3            notebook 05: token selection vs embedding optimisation, Table 3, Fig. 4, 6
  faithfulness      notebook 07 (beyond the paper): deletion and insertion curves of the TSV, the
                    captum rivals and two controls, their areas, localisation and sanity checks
  bias              notebook 08 (toy world): does the generator inherit each species' preferred scene, and do
                    scene concept tokens detect it? Cliff's delta with intervals, pixel-measured ground truth,
                    an unbiased control (--set bias.generator_control=true: also a prior retrained unbiased)
  all               every section above in notebook order (00 to 05, 07, 08 on the toy world), then the claims
                    ledger and the manifest
  seeds             the seed replicates r = 1 .. replicates - 1 (retrained extractors, redrawn
                    noise; results/P/seeds/r<r>/tables), then the claims ledger over them (`make seeds`)
  gates             check the run's tables against the toy world's science gates (tokenizer, prior
                    samples, Fig. 3, Table 2, localisation; another VQGM family than taming's: the
                    model gates alone): results/P/tables/gates; exit status 1 when one fails (`make
                    all` runs it last on the toy profiles)
  ledger            the claims ledger: each claim of the paper and of notebooks 07-08 as a named check
                    over the run's tables and its replicates (holds / fails / inconclusive, with the
                    numbers): results/P/tables/ledger.{csv,md,tex} (`make all` writes it)
  families          P's claims ledger beside the taming toy model's (profile toy), check by check: where
                    each claim holds, both families, one or neither: results/P/tables/families
  manifest          results/P/MANIFEST.json: each table's and figure's SHA-256, the notebook cell or
                    command that wrote it, commit, profile hash, versions, CPU (`make all` ends with it)
  verify            recompute the manifest's hashes and evaluate the ledger again; exit status 1 naming
                    each file that does not match and each claim recorded as holding that no longer
                    holds (`make verify`)
  atlas             the token atlas (`make atlas`): a static HTML site of CE's concept tokens, a
                    page per class and per token, in results/P/atlas (opens from file://, offline)
  book              the companion as a static site (`make book`): Jupyter Book over the executed notebooks
                    of `make all` (nothing runs again), the docs, the ledger and the atlas, in
                    results/P/book/html (opens from file://, no network request at view time)

Data parallel, N processes on one machine (gloo on CPU, nccl with one GPU per process on CUDA):

  torchrun --standalone --nproc-per-node N -m cortex_nb COMMAND --profile P
  (or: python -m torch.distributed.run --standalone --nproc-per-node N -m cortex_nb ...)

generate and tsv split their shards / chunks between the ranks, train-extractors trains with
DistributedDataParallel (each rank a slice of every global batch of extractors.batch_size);
vqgm and evaluators are built by rank 0 while the others wait. Results equal a single process's
(token stores and TSVs exactly; extractor weights up to float rounding). The sections after that
(fig3, table2, table3) compute the TSVs they read on every rank, then rank 0 alone runs the
section. Rank 0 writes tables and final files and prints; each process uses
max(1, threads // N) torch threads. A crashed run resumes when rerun, with any N. Details: the
docstring of cortex_nb.engine.distributed.

Errors you can fix (a bad profile value, a missing or damaged file, a results directory that
cannot be written) are printed as one line plus the fix, exit status 2; --debug shows the
traceback. The results directory is checked for writing before any work starts.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

import yaml

#: section commands -> their module under cortex_nb.pipeline, in notebook order
SECTIONS = {"vqgm-report": "s00_vqgm", "generate": "s01_dataset", "train-extractors": "s02_extractors",
            "fig3": "s03_image_level", "table2": "s04_concept_level", "table3": "s05_editing",
            "faithfulness": "s07_faithfulness", "bias": "s08_bias"}
#: sections that `all` leaves out
NOT_IN_ALL: tuple[str, ...] = ()
#: the splits whose TSVs a section reads (computed on every rank before rank 0 runs the section)
TSV_SPLITS = {"fig3": ("test", "train"), "table2": ("train",), "table3": ("test",)}
STAGES = ("vqgm", "evaluators", "vqgm-report", "generate", "train-extractors", "tsv", "fig3", "table2", "table3",
          "faithfulness", "bias", "all", "seeds", "gates", "ledger", "families", "manifest", "verify",
          "atlas", "book")
SPLITS = ("train", "val", "test")


class GateFailure(Exception):
    """A science gate failed (``gates``): exit status 1, the failed gates named."""


class VerifyFailure(Exception):
    """``verify`` found a file that does not match the manifest or a claim that no longer holds: exit 1."""


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
            # a ReaderError (a control character) has no .problem
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"--set {item!r}: the value is not valid YAML ({why})",
                            fix="quote strings, write lists as [1, 2]") from None
    return out


def parser() -> argparse.ArgumentParser:
    from .io.config import PROFILES

    ap = argparse.ArgumentParser(prog="python -m cortex_nb", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=STAGES, metavar="COMMAND", help=", ".join(STAGES))
    ap.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} (default $CORTEX_PROFILE or toy)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile key, e.g. --set data.n_train=100 (repeatable)")
    ap.add_argument("--split", action="extend", nargs="+", choices=SPLITS, default=None,
                    help="tsv: the splits to compute (default: train test)")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`~cortex_nb.errors.UserError` becomes one line plus its fix on
    stderr and exit status 2 (with ``--debug``, the traceback)."""
    from .errors import UserError

    args = parser().parse_args(argv)
    try:
        return _main(args)
    except GateFailure as e:
        print(f"gates FAILED: {', '.join(e.args[0])}", file=sys.stderr)
        return 1
    except VerifyFailure as e:
        print("verify FAILED:\n" + "\n".join(f"  {p}" for p in e.args[0]), file=sys.stderr)
        return 1
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from .engine import distributed
    from .io.config import ensure_writable, load_profile
    from .pipeline.context import bind_profile   # not pipeline.run: gates, ledger, manifest never import torchvision

    cfg = load_profile(args.profile, **_parse_sets(args.set))
    ensure_writable(cfg)
    bind_profile(cfg)   # provenance and the paper-dry banner, also for commands that never call setup()
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
    """Run one command on every rank; what only one process should do (printing, tables,
    figures) runs on rank 0 alone (``distributed.local``). Returns the one-line summary."""
    from .engine import distributed

    main = distributed.is_main()
    if args.stage == "seeds":  # one process: the replicates run one after another
        summary = ""
        if main:
            with distributed.local():
                from .pipeline import seeds

                done = seeds.run(cfg, _parse_sets(args.set))
                summary = f"{len(done)} replicate(s) in " + ", ".join(done) + "; " + _provenance("ledger", cfg)
        return summary
    if args.stage == "gates":
        if not main:
            return ""
        from .pipeline import gates

        df = gates.check(cfg.paths.tables, gates.science(cfg))
        print(gates.gate_table(cfg, df).to_string(index=False), flush=True)
        failed = list(df.gate[~df.passed])
        if failed:
            raise GateFailure(failed)
        return f"gates: {len(df)} passed"
    if args.stage == "families":
        if not main:
            return ""
        from .pipeline import families

        disp = families.run(cfg)
        print(disp.to_string(index=False), flush=True)
        return "families: " + ", ".join(f"{k} {v}" for k, v in disp["Holds in"].value_counts().items())
    if args.stage in ("ledger", "manifest", "verify"):
        return _provenance(args.stage, cfg) if main else ""
    if args.stage == "atlas":
        if not main:
            return ""
        from .pipeline.atlas import build_atlas

        index = build_atlas(cfg)
        size = sum(f.stat().st_size for f in index.parent.rglob("*") if f.is_file())
        return f"atlas: {index} ({size / 1e6:.1f} MB)"
    if args.stage == "book":
        if not main:
            return ""
        from .pipeline.book import build

        index = build(str(cfg.name))
        size = sum(f.stat().st_size for f in index.parent.rglob("*") if f.is_file())
        return f"book: {index} ({size / 1e6:.1f} MB)"
    if args.stage in ("vqgm", "evaluators", "vqgm-report"):  # one process builds, the others wait
        summary = ""
        if main:
            with distributed.local():
                summary = _build(args.stage, cfg)
        return summary

    from .pipeline import run

    if args.stage == "tsv":
        composed = run.compose(cfg, evaluators=False)
        splits = list(dict.fromkeys(args.split or ["train", "test"]))
        done = []
        for arch, f in composed.extractors.items():
            for split in splits:
                tsv = run.get_tsv(cfg, arch, f, composed.vqgm, split)
                done.append(f"{arch}/{split} {tuple(tsv.shape)}")
        return "TSV " + ", ".join(done)

    # sections: every rank builds what splits between the ranks, then rank 0 runs the section(s)
    sections = [s for s in SECTIONS if s != "vqgm-report" and s not in NOT_IN_ALL
                and (s != "bias" or cfg.vqgm.source == "toy")] if args.stage == "all" else [args.stage]
    composed = run.compose(cfg, extractors=sections != ["generate"], evaluators=False)
    for split in dict.fromkeys(s for name in sections for s in TSV_SPLITS.get(name, ())):
        for arch, f in composed.extractors.items():
            run.get_tsv(cfg, arch, f, composed.vqgm, split)
    summaries = []
    if main:
        with distributed.local():
            if args.stage == "all":
                summaries.append(_section("vqgm-report", cfg))
            composed.evaluators = run.get_evaluators(cfg)
            summaries += [_section(name, cfg, composed) for name in sections]
    if args.stage == "all" and main:
        with distributed.local():
            summaries += [_provenance("ledger", cfg), _provenance("manifest", cfg)]   # as `make all` ends
    if args.stage == "generate":
        return "token stores " + ", ".join(f"{k} {len(v)}" for k, v in composed.stores.items())
    if args.stage == "train-extractors":
        return "extractors " + ", ".join(f"{a} (best epoch {r.best_epoch}, val acc {r.best_val_acc:.3f})"
                                         for a, r in composed.fits.items())
    return "; ".join(summaries)


def _build(stage: str, cfg) -> str:
    """The single-process commands: vqgm, evaluators, vqgm-report (rank 0 only)."""
    from .pipeline import run

    if stage == "vqgm-report":
        return _section(stage, cfg)
    if stage == "vqgm":
        vqgm = run.get_vqgm(cfg)
        report = {"K": vqgm.K, "d": vqgm.d, "m": vqgm.m, "fingerprint": vqgm.fingerprint()}
        if cfg.vqgm.source == "toy":
            from .pipeline.s00_vqgm import vqgm_report

            report = vqgm_report(cfg, vqgm, run.get_evaluators(cfg))
        print(json.dumps(report, indent=2))
        return f"VQGM K={vqgm.K} m={vqgm.m} fingerprint {vqgm.fingerprint()}"
    evs = run.get_evaluators(cfg)
    print("evaluators:", ", ".join(evs))
    return f"{len(evs)} evaluators"


def _provenance(stage: str, cfg) -> str:
    """ledger, manifest, verify (rank 0 only)."""
    from pathlib import Path

    from .io import provenance
    from .pipeline import ledger

    root = Path(cfg.paths.root)
    if stage == "ledger":
        df = ledger.write_ledger(cfg)
        print(df[["check", "verdict", "seeds"]].to_string(index=False), flush=True)
        return "ledger: " + ", ".join(f"{v} {n}" for v, n in df.verdict.value_counts().items())
    if stage == "manifest":
        path = provenance.write_manifest(cfg.name, root)
        files = provenance.load_manifest(cfg.name, root)["files"]
        unknown = sum("writer" in e for e in files.values())
        return f"manifest: {path} ({len(files)} files, {unknown} without a record of their writer)"
    problems, notes = provenance.check_manifest(cfg.name, root)
    for note in notes:
        print(f"note: {note}", flush=True)
    n_files = len((provenance.load_manifest(cfg.name, root) or {}).get("files", {}))
    problems += ledger.verify_ledger(cfg)
    if problems:
        raise VerifyFailure(problems)
    return f"verify: {n_files} files match the manifest; every claim recorded as holding still holds"


def _section(name: str, cfg, composed=None) -> str:
    """Run one section (its tables and figures written), print its tables, close its figures."""
    import matplotlib.pyplot as plt

    module = importlib.import_module(f".pipeline.{SECTIONS[name]}", __package__)
    result = module.run(cfg) if composed is None else module.run(cfg, composed)
    for table, df in result.tables.items():  # a frame indexed by something other than 0..N-1 shows its index
        print(f"\n{table}:\n{df.to_string(index=type(df.index).__name__ != 'RangeIndex')}", flush=True)
    for fig in result.figures.values():
        plt.close(fig)
    return result.summary()


if __name__ == "__main__":
    sys.exit(main())
