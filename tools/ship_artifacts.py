"""Ship the toy profile's trained VQGM and small evaluators with the repository (make tooling, not the package).

``python tools/ship_artifacts.py [PROFILE] [vqgm] [EVALUATOR ...]`` copies from ``results/<profile>/cache``

- ``vqgm``: the finished toy VQGM build of ``cache/vqgm`` (taming config.yaml + model.ckpt, its
  report.json and build.json) into ``cortex_nb/artifacts/toy-vqgm/``;
- ``maskgit`` (with PROFILE toy-maskgit): the finished toy MaskGIT build of ``cache/vqgm-maskgit`` into
  ``cortex_nb/artifacts/toy-maskgit/``;
- an evaluator name (default: all four): ``cache/evaluators/<name>.pt`` with its .sha256 sidecar and
  its line of the training report into ``cortex_nb/artifacts/toy-evaluator-<name>/``. The two ViTs
  ship as trained (2.2 MB each); the ResNets (45 / 85 MB in float32) ship their floating-point
  tensors in float16 (22 / 43 MB; :func:`cortex_nb.toy.evaluators.load_evaluator` casts them back to
  float32, exactly, so every machine evaluates with the same weights);

and records their SHA-256, the settings digest and the machine that trained them in
``cortex_nb/artifacts/registry.json`` (:mod:`cortex_nb.vqgm.shipped`). Run it after retraining
(``make all FROM_SCRATCH=1``) when a shipped artifact should change.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from cortex_nb import load_profile
from cortex_nb.vqgm import shipped
from cortex_nb.io.config import run_info
from cortex_nb.io.files import save_json
from cortex_nb.pipeline.keys import evaluator_key, evaluators_cache_key

VQGM_FILES = ["config.yaml", "model.ckpt", "report.json", "build.json"]
MASKGIT_FILES = ["config.json", "model.pt", "model.pt.sha256", "report.json", "build.json"]
SMALL_EVALUATORS = ["vit_p4", "vit_p8"]
#: shipped with their floating-point tensors in float16 (the float32 files would take the artifacts past the cap)
HALF_EVALUATORS = ["resnet18", "resnet34"]


def _half_copy(src: Path, name: str, dst: Path) -> None:
    """``src/<name>.pt`` with every floating-point tensor of its state_dict in float16, written to ``dst`` with its
    checksum sidecar; the training report line is copied beside it."""
    import shutil

    import torch

    from cortex_nb.io.files import save_with_checksum

    blob = torch.load(src / f"{name}.pt", map_location="cpu", weights_only=True)
    blob["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    save_with_checksum(blob, dst / f"{name}.pt")
    shutil.copyfile(src / f"{name}.report.json", dst / f"{name}.report.json")


def main(profile: str = "toy", *what: str) -> int:
    cfg = load_profile(profile)
    info = run_info()
    machine = f"{info['cpu']} ({info['cpu_capability']}), torch {info['torch']}"
    what = what or ("vqgm", *SMALL_EVALUATORS, *HALF_EVALUATORS)
    for item in what:
        if item == "vqgm":
            src = cfg.paths.cache + "/vqgm"
            build = json.loads(open(f"{src}/build.json").read())
            entry = shipped.register("toy-vqgm", src, VQGM_FILES, build["hash"], trained_on=machine,
                                     what="the toy profile's VQGM: taming VQModel tokenizer + class-conditional GPT prior")
        elif item == "maskgit":
            src = Path(cfg.paths.cache) / "vqgm-maskgit"
            build = json.loads((src / "build.json").read_text())
            entry = shipped.register("toy-maskgit", src, MASKGIT_FILES, build["hash"], trained_on=machine,
                                     what="the toy-maskgit profile's VQGM: taming Encoder / Decoder around "
                                          "vector-quantize-pytorch's VectorQuantize + bidirectional MaskGIT prior")
        else:
            src = Path(cfg.paths.cache) / "evaluators"
            report = json.loads((src / "report.json").read_text())
            if report.get("_key") != evaluators_cache_key(cfg) or item not in report:
                raise SystemExit(f"{src} does not hold the {profile} profile's finished {item}: run make all first")
            if report[item].get("source", "trained here") != "trained here":
                raise SystemExit(f"{src / item}.pt is itself the shipped one: retrain it (make all FROM_SCRATCH=1)")
            half = item in HALF_EVALUATORS
            save_json(src / f"{item}.report.json", {**report[item], "source": f"shipped (trained on {machine}"
                                                    + (", float16 weights)" if half else ")")})
            if half:
                staging = Path(tempfile.mkdtemp())
                _half_copy(src, item, staging)
                src = staging
            entry = shipped.register(f"toy-evaluator-{item}", src, [f"{item}.pt", f"{item}.pt.sha256",
                                                                    f"{item}.report.json"],
                                     evaluator_key(cfg, item), trained_on=machine,
                                     what=f"the toy profile's {item} evaluator (torchvision architecture"
                                          + (", weights stored in float16)" if half else ")"))
        print(item, json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
