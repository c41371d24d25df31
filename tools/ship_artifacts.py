"""Ship the toy profile's trained VQGM with the repository (make tooling, not the package).

``python tools/ship_artifacts.py [PROFILE]`` copies the finished toy VQGM build of
``results/<profile>/cache/vqgm`` (taming config.yaml + model.ckpt, its report.json and build.json)
into ``cortex_nb/artifacts/toy-vqgm/`` and records their SHA-256, the settings digest and the
machine that trained it in ``cortex_nb/artifacts/registry.json`` (:mod:`cortex_nb.shipped`).
Run it after retraining (``make all FROM_SCRATCH=1``) when the shipped VQGM should change.
"""
from __future__ import annotations

import json
import sys

from cortex_nb import load_profile, shipped
from cortex_nb.config import run_info

FILES = ["config.yaml", "model.ckpt", "report.json", "build.json"]


def main(profile: str = "toy") -> int:
    cfg = load_profile(profile)
    src = cfg.paths.cache + "/vqgm"
    build = json.loads(open(f"{src}/build.json").read())
    info = run_info()
    entry = shipped.register("toy-vqgm", src, FILES, build["hash"],
                             trained_on=f"{info['cpu']} ({info['cpu_capability']}), torch {info['torch']}",
                             what="the toy profile's VQGM: taming VQModel tokenizer + class-conditional GPT prior")
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
