"""Shared by every benchmark: command line, machine description, timing, JSON results.

Import this module before torch (it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the caller chose
otherwise: busy-waiting OpenMP threads cost 4-8x on a shared machine).

Timing protocol (:func:`compare`): the contenders run round-robin (A, B, C, A, B, C, ...) so that
load changes on a shared machine hit all of them alike; the first ``warmup`` rounds are not
counted (they pay for allocator growth, oneDNN primitive creation, lazy imports); the result is
the median of the remaining ``repeats`` rounds, and every round's time is kept in the JSON.

Each benchmark writes ``results/benchmarks/<name>.json`` (:func:`write_result`)::

    {"name", "title", "quick", "threads", "machine": {...}, "wall_s",
     "rows": [{"benchmark", "size", "ours", "alternative", "ours_s", "alternative_s", "ratio",
               "goal", "goal_min", "met", "agreement", "repeats", "times"}, ...],
     "notes": [...], "extra": {...}}

``ratio`` = alternative_s / ours_s (how many times faster ours is); ``met`` compares it with
``goal_min`` (None when the row has no goal). ``benchmarks/report.py`` turns the JSONs into
``results/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after setting OMP_WAIT_POLICY)

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "results" / "benchmarks"

if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------- command line
def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """``--quick`` (tiny sizes, one repeat: for tests and development), ``--threads`` (torch CPU
    threads, default 2: the cores of the reference machine), ``--out`` (JSON directory)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes and 1 repeat (smoke run, not a measurement)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--out", type=Path, default=OUT_DIR, help=f"where <name>.json goes (default {OUT_DIR})")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.started = time.perf_counter()
    return args


# ---------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the numbers were measured on. ``cores_usable`` is this process's CPU affinity;
    ``loadavg`` (1, 5, 15 min) says how busy the machine was (other workers share it)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(),
        # what torch's kernels use (AVX2 on an AVX-512 CPU under ATEN_CPU_CAPABILITY=avx2 emulation)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": load,
    }


def describe(m: dict[str, Any]) -> str:
    """One line for tables and logs."""
    load = "" if not m.get("loadavg") else f", load {m['loadavg'][0]}"
    cap = f" ({m['cpu_capability']})" if m.get("cpu_capability") else ""
    return (f"{m['cpu']}{cap}, {m['cores_usable']}/{m['cores_logical']} cores, torch {m['torch']}, "
            f"{m['torch_threads']} thread(s), {m['date']}{load}")


# ---------------------------------------------------------------------- timing
def compare(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
            warmup_calls: dict[str, Callable[[], Any]] | None = None) -> dict[str, Any]:
    """Time the contenders round-robin: ``warmup`` uncounted rounds, then ``repeats`` counted ones.

    ``warmup_calls`` may replace a contender's warm-up call by a cheaper one (same code path,
    smaller input); by default the warm-up is the contender itself. Returns
    ``{"median": {name: s}, "times": {name: [s, ...]}, "first": {name: output of the first call}}``;
    the first outputs are what the agreement checks look at (no extra run needed).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    first: dict[str, Any] = {}
    for r in range(warmup + repeats):
        for name, fn in contenders.items():
            call = (warmup_calls or {}).get(name, fn) if r < warmup else fn
            t0 = time.perf_counter()
            out = call()
            dt = time.perf_counter() - t0
            if name not in first and call is fn:
                first[name] = out
            if r >= warmup:
                times[name].append(dt)
            del out
    return {"median": {k: statistics.median(v) for k, v in times.items()}, "times": times, "first": first}


# ---------------------------------------------------------------------- results
def row(benchmark: str, size: str, ours: str, alternative: str | None, ours_s: float,
        alternative_s: float | None, *, goal: str = "—", goal_min: float | None = None, agreement: str = "",
        repeats: int | None = None, times: dict[str, list[float]] | None = None, **extra: Any) -> dict[str, Any]:
    """One table row; ratio = alternative_s / ours_s, met = ratio >= goal_min (None: no goal).
    ``alternative_s=None``: a timing without a contender (ratio and met are None)."""
    if alternative_s is None:
        ratio, goal_min = None, None
    else:
        ratio = alternative_s / ours_s if ours_s > 0 else float("inf")
    return {"benchmark": benchmark, "size": size, "ours": ours, "alternative": alternative,
            "ours_s": ours_s, "alternative_s": alternative_s, "ratio": ratio, "goal": goal,
            "goal_min": goal_min, "met": None if goal_min is None else bool(ratio >= goal_min),
            "agreement": agreement, "repeats": repeats, "times": times or {}, **extra}


def write_result(args: argparse.Namespace, name: str, title: str, rows: list[dict], *,
                 notes: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write ``<args.out>/<name>.json`` atomically and print a short summary."""
    if args.quick:  # tiny sizes say nothing about the goals
        rows = [{**r, "met": None, "goal": f"{r['goal']} (quick: not judged)" if r["goal_min"] else r["goal"]}
                for r in rows]
    out = {
        "name": name, "title": title, "quick": bool(args.quick), "threads": torch.get_num_threads(),
        "machine": machine(), "wall_s": round(time.perf_counter() - args.started, 1),
        "argv": sys.argv[1:], "rows": rows, "notes": notes or [], "extra": extra or {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    print(f"{title}  [{'QUICK, ' if args.quick else ''}{describe(out['machine'])}; {out['wall_s']} s]")
    for r in rows:
        met = "" if r["met"] is None else ("  goal met" if r["met"] else "  GOAL NOT MET")
        alt = "" if r["ratio"] is None else f"  {r['alternative']} {r['alternative_s']:.4g} s  x{r['ratio']:.3g}"
        print(f"  {r['benchmark']} | {r['size']} | ours {r['ours_s']:.4g} s{alt} ({r['goal']}){met}"
              f"  [{r['agreement']}]")
    print(f"  -> {path}")
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (0 when both are 0)."""
    a, b = a.detach().double(), b.detach().double()
    den = b.abs().max().item()
    num = (a - b).abs().max().item()
    return num / den if den > 0 else num
