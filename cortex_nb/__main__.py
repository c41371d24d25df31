"""Headless stages: ``python -m cortex_nb STAGE --profile P [--set key=value ...]``.

The notebooks call the same stage functions (cortex_nb.stages); this entry point is for
scripted runs and GPUs. Stages:

  vqgm        train (toy) or load (imagenet) the VQGM and print its quality report
  evaluators  train (toy) or load (imagenet) the evaluators
  generate    sample the synthetic train/val/test token stores (resumable)
  train-extractors  train CE and RE on the token stores (resumable) and write Table 1
"""
from __future__ import annotations

import argparse
import json
import sys

import yaml


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    from . import stages
    from .config import PROFILES, load_profile

    ap = argparse.ArgumentParser(prog="python -m cortex_nb", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["vqgm", "evaluators", "generate", "train-extractors"])
    ap.add_argument("--profile", default=None, help=f"one of {', '.join(PROFILES)} (default $CORTEX_PROFILE or toy)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile key, e.g. --set data.n_train=100 (repeatable)")
    args = ap.parse_args(argv)
    cfg = load_profile(args.profile, **_parse_sets(args.set))
    if args.stage == "vqgm":
        vqgm = stages.get_vqgm(cfg)
        report = {"K": vqgm.K, "d": vqgm.d, "m": vqgm.m, "fingerprint": vqgm.fingerprint()}
        if cfg.vqgm.source == "toy":
            report = stages.vqgm_report(cfg, vqgm, stages.get_evaluators(cfg))
        print(json.dumps(report, indent=2))
    elif args.stage == "evaluators":
        evs = stages.get_evaluators(cfg)
        print("evaluators:", ", ".join(evs))
    elif args.stage == "generate":
        stores = stages.generate_dataset(cfg)
        test = stores["test"]
        evs = stages.get_evaluators(cfg)
        print(stages.evaluator_scores(evs, test.images, test.labels).to_string(index=False))
    elif args.stage == "train-extractors":
        from . import reports

        vqgm = stages.get_vqgm(cfg)
        stages.generate_dataset(cfg, vqgm)
        results = stages.get_extractors(cfg, vqgm)
        reports.training_curves_figure(cfg, results)
        print(reports.table1(cfg, stages.extractor_accuracy(cfg, results, vqgm)).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
