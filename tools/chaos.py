"""Does a `make all` survive crashes? The whole pipeline under faults, compared byte for byte with an undisturbed run.

    python tools/chaos.py [--profile smoke] [--kills 30] [--seed 0] [--out results/chaos]

From the checkout it runs in (committed state: a `git clone` of HEAD), with the checkout's own .venv:

1. reference: `make all` in a fresh clone, undisturbed; every table, figure and token store hashed;
2. crashes: in a second fresh clone whose path holds spaces and non-ASCII characters, `make all` is started and
   its whole process group killed with SIGKILL (as a crash or an out-of-memory kill would) at a random moment
   (``--spread``), then started again (it resumes from what the killed run left), killed again, ... until a run
   finishes; its end state is compared, the results emptied, and the next series starts, until ``--kills``
   interruptions; every fifth is a SIGINT (Ctrl-C) to the group instead;
3. concurrency: two `make all` started at the same moment in a third fresh clone;
4. a full disk (root only: it mounts a tmpfs): in a fourth fresh clone the profile's results directory is a small
   filesystem, ``--disk-fraction`` of what the reference run leaves there, so a stage finds it full; that run must
   stop with the project's one-paragraph error naming the file and the space it needs, and leave no partial file;
   then the filesystem is grown (as a user frees space) and `make all` run again;
5. aimed kills (``--stage-kills 01,06``): random moments fall mostly in the long stages, so each stage named here
   is killed on purpose, at a random point of its own duration in the reference run, then the run is completed;
6. the end states of 2-5 are compared file by file with 1.

``--cases`` runs a subset (``kills,concurrent,disk-full,stages``; the reference always runs). The interruptions and
the concurrent runs report in ``chaos.{md,json}``, the full disk in ``disk_full.{md,json}``, the aimed kills in
``stage_kills.{md,json}``, so a rerun of one case keeps the others' last reports.

Files that no run reproduces byte for byte (their bytes hold timings or the run's own identity) are listed in
:data:`VOLATILE` and compared by presence only. The report (Markdown and JSON under ``--out``): kills per stage,
what survived, every file that differs. Exit status 1 when a file differs or a run failed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: outputs whose bytes differ between two undisturbed runs on one machine: timings (the cost of each attribution; the
#: seconds smoke's evaluators took to train), the run's own record (manifest, write times of the provenance log)
VOLATILE = ("tables/faithfulness_cost.", "tables/toy_evaluators.", "MANIFEST.json", "profile.yaml", ".provenance.jsonl")


def _env(cwd: Path) -> dict:
    env = dict(os.environ)
    env.pop("CORTEX_PROFILE", None)
    # the clone's own package first: the shared .venv's editable install points at this checkout
    env["PYTHONPATH"] = str(cwd) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def clone(dest: Path) -> Path:
    """A fresh clone of HEAD that runs on this checkout's .venv. Its pyproject.toml is dated back: a clone's file is
    newer than the venv's install stamp, and make would otherwise reinstall the package into the shared venv,
    pointing it at the clone (which is deleted at the end)."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    os.utime(dest / "pyproject.toml", (0, 0))
    return dest


def running(log_text: str) -> list[str]:
    """The stages a `make all` log shows started ("== NN_...") and not finished ("   NN_... took"), in order."""
    done = set(re.findall(r"^   (\d\d)_\S+ took", log_text, re.M))
    return sorted(set(re.findall(r"^== (\d\d)_", log_text, re.M)) - done)


def _head(report: dict) -> dict:
    """What every case's report starts with: the profile, commit, date, CPU and the reference run's seconds."""
    return {k: report[k] for k in ("profile", "commit", "date", "cpu", "reference_s")}


def make_all(cwd: Path, profile: str, venv: Path, log) -> subprocess.Popen:
    return subprocess.Popen(["make", "all", f"PROFILE={profile}", f"VENV={venv}"], cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=_env(cwd),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def outputs(cwd: Path, profile: str) -> dict[str, str]:
    """SHA-256 of every table, figure, manifest and token store file of the profile's run."""
    out = {}
    roots = [cwd / "results" / profile, cwd / "figures" / profile]
    for r in roots:
        for p in sorted(r.rglob("*")):
            rel = p.relative_to(cwd).as_posix()
            if not p.is_file() or "/executed/" in rel or "/timings/" in rel or "/deps/" in rel:
                continue
            if "/cache/" in rel and not re.search(r"/(tokens|labels|images)\.npy$", rel):
                continue      # caches: the token stores (what every later stage reads); weights are checked by their users
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def compare(ref: dict, got: dict) -> list[str]:
    diffs = []
    for rel in sorted(set(ref) | set(got)):
        if rel not in got:
            diffs.append(f"missing: {rel}")
        elif rel not in ref:
            if ".tmp" in rel or rel.endswith(".lock"):
                diffs.append(f"left behind: {rel}")
            else:
                diffs.append(f"extra: {rel}")
        elif ref[rel] != got[rel] and not any(v in rel for v in VOLATILE):
            diffs.append(f"differs: {rel}")
    return diffs


def reset(cwd: Path, profile: str) -> None:
    """The clone as a fresh one: the profile's results and figures as committed, nothing else."""
    for d in ("results/" + profile, "figures/" + profile):
        subprocess.run(["git", "checkout", "-q", "--", d], cwd=cwd, capture_output=True)
        subprocess.run(["git", "clean", "-q", "-fdx", "--", d], cwd=cwd, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", type=float, default=0.25,
                    help="an interruption comes after uniform(0.02, SPREAD) x the reference run's duration "
                         "(the reruns resume, so the interruptions walk through the stages)")
    ap.add_argument("--out", default=str(ROOT / "results" / "chaos"))
    ap.add_argument("--keep", action="store_true", help="keep the clones (under the temporary directory)")
    ap.add_argument("--cases", default="kills,concurrent,disk-full,stages",
                    help="which cases to run after the reference (comma-separated: kills, concurrent, disk-full, "
                         "stages)")
    ap.add_argument("--stage-kills", default="01,06",
                    help="the stages the 'stages' case kills on purpose, one SIGKILL each, in this order")
    ap.add_argument("--disk-fraction", type=float, default=0.5,
                    help="the full-disk case's filesystem, as a fraction of the reference's results directory")
    args = ap.parse_args(argv)
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = cases - {"kills", "concurrent", "disk-full", "stages"}
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    venv = ROOT / ".venv"
    if not (venv / ".cortex-installed").exists():
        print("tools/chaos.py: no .venv in this checkout: run `make setup` first", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="cortex-chaos-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"profile": args.profile, "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                                 capture_output=True, text=True).stdout.strip(),
              "date": time.strftime("%Y-%m-%d"), "kills": [], "failures": []}
    try:
        from cortex_nb.io.machine import cpu_model
        report["cpu"] = cpu_model()
    except Exception:  # noqa: BLE001
        report["cpu"] = "unknown"

    # 1. reference
    ref_dir = clone(work / "reference")
    t0 = time.monotonic()
    with open(work / "reference.log", "wb") as log:
        rc = make_all(ref_dir, args.profile, venv, log).wait()
    report["reference_s"] = round(time.monotonic() - t0, 1)
    if rc != 0:
        print(f"reference make all failed (rc {rc}): {work / 'reference.log'}", file=sys.stderr)
        return 1
    ref = outputs(ref_dir, args.profile)
    print(f"reference: {len(ref)} files in {report['reference_s']} s", flush=True)

    ok = True
    if "disk-full" in cases:
        dreport = _head(report)
        dreport.update(disk_full(work, ref_dir, ref, args.profile, venv, args.disk_fraction))
        (out / "disk_full.json").write_text(json.dumps(dreport, indent=1, ensure_ascii=False) + "\n")
        (out / "disk_full.md").write_text(disk_full_markdown(dreport))
        print(disk_full_markdown(dreport), flush=True)
        ok = ok and dreport["held"]
    if "stages" in cases:
        sreport = _head(report)
        sreport.update(stage_kills(work, ref_dir, ref, args.profile, venv, args.stage_kills.split(","), rng))
        (out / "stage_kills.json").write_text(json.dumps(sreport, indent=1, ensure_ascii=False) + "\n")
        (out / "stage_kills.md").write_text(stage_kills_markdown(sreport))
        print(stage_kills_markdown(sreport), flush=True)
        ok = ok and sreport["held"]
    if not {"kills", "concurrent"} & cases:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 0 if ok else 1

    # 2. kills, in a path with spaces and non-ASCII characters: series of interrupted runs, each series from an empty
    # results directory until a run finishes undisturbed (its end state then compared), until --kills interruptions
    chaos_dir = clone(work / "chaos dir — ü ñ")
    log_path = work / "chaos.log"
    t0 = time.monotonic()
    report["series"] = []
    kills = 0
    while "kills" in cases and kills < args.kills:
        reset(chaos_dir, args.profile)
        series = {"kills": 0}
        while True:
            sig = signal.SIGINT if kills % 5 == 4 else signal.SIGKILL
            delay = rng.uniform(0.02, args.spread) * report["reference_s"]
            with open(log_path, "ab") as log:
                log.write(f"\n##### interruption {kills + 1}: {sig.name} after {delay:.1f} s\n".encode())
                log.flush()
                mark = log_path.stat().st_size
                p = make_all(chaos_dir, args.profile, venv, log)
                try:
                    rc = p.wait(timeout=delay if kills < args.kills else None)
                    series["rc"] = rc
                    break                                   # the run finished: this series is over
                except subprocess.TimeoutExpired:
                    pass
                tail = log_path.read_bytes()[mark:].decode(errors="replace")
                now = running(tail) or ["setup/00"]
                os.killpg(p.pid, sig)
                try:
                    rc = p.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    report["failures"].append(f"interruption {kills + 1}: make ignored {sig.name} for 120 s")
                    os.killpg(p.pid, signal.SIGKILL)
                    rc = p.wait()
                try:                                        # what a terminal's Ctrl-C leaves running dies with it
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                kills += 1
                series["kills"] += 1
                report["kills"].append({"n": kills, "signal": sig.name, "at_s": round(delay, 1),
                                        "stage": ",".join(now), "rc": rc})
                print(f"interruption {kills}: {sig.name} at {delay:.0f} s during {','.join(now)}", flush=True)
        series["diffs"] = compare(ref, outputs(chaos_dir, args.profile)) if series.get("rc") == 0 else ["run failed"]
        report["series"].append(series)
        print(f"series {len(report['series'])}: {series['kills']} interruptions, "
              f"{len(series['diffs'])} difference(s) from the reference" + "".join(f"\n  {d}" for d in series["diffs"]),
              flush=True)
    report["chaos_s"] = round(time.monotonic() - t0, 1)
    report["chaos_rc"] = max((s.get("rc", 1) for s in report["series"]), default=0)
    report["chaos_diffs"] = [d for s in report["series"] for d in s["diffs"]]

    # 3. two make all at once in one checkout
    report["concurrent_rcs"], report["concurrent_diffs"] = [], []
    if "concurrent" in cases:
        both_dir = clone(work / "concurrent")
        logs = [open(work / f"concurrent{i}.log", "wb") for i in (1, 2)]
        procs = [make_all(both_dir, args.profile, venv, log) for log in logs]
        rcs = [p.wait() for p in procs]
        for log in logs:
            log.close()
        report["concurrent_rcs"] = rcs
        if any(rc == 0 for rc in rcs):
            report["concurrent_diffs"] = compare(ref, outputs(both_dir, args.profile))
        else:
            report["concurrent_diffs"] = ["neither run finished"]

    ok = ok and report["chaos_rc"] == 0 and not report["chaos_diffs"] and not report["concurrent_diffs"] \
        and not report["failures"]
    report["held"] = ok
    (out / "chaos.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    (out / "chaos.md").write_text(markdown(report))
    print(markdown(report))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"clones and logs kept in {work}")
    return 0 if ok else 1


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def disk_full(work: Path, ref_dir: Path, ref: dict, profile: str, venv: Path, fraction: float) -> dict:
    """Case 4: the results directory on a tmpfs of ``fraction`` x the reference's results; `make all` must stop with
    the project's disk-full error (the file, the space needed), leave no partial file; after the tmpfs grows, a rerun
    must finish and match the reference. Needs root (mount); a machine without it reports the case as not tried."""
    need = _du(ref_dir / "results" / profile)
    size = max(1 << 20, int(need * fraction))
    d = clone(work / "disk-full")
    res = d / "results" / profile
    res.mkdir(parents=True, exist_ok=True)
    r = {"results_bytes": need, "tmpfs_bytes": size, "held": False}
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(res)], capture_output=True,
                       text=True)
    if m.returncode != 0:
        r["not_tried"] = f"mount failed (needs root): {m.stderr.strip()}"
        return r
    try:
        subprocess.run(["git", "checkout", "-q", "--", f"results/{profile}"], cwd=d, capture_output=True)
        t0 = time.monotonic()
        with open(work / "disk-full-1.log", "wb") as log:
            r["first_rc"], _ = _watch(make_all(d, profile, venv, log), res)
        r["first_s"] = round(time.monotonic() - t0, 1)
        text = (work / "disk-full-1.log").read_text(errors="replace")
        lines = [ln.strip() for ln in text.splitlines() if "no space left on the device holding" in ln]
        r["message"] = lines[-1] if lines else ""
        r["stage"] = ",".join(running(text)) or "?"
        r["raw_tracebacks"] = len(re.findall(r"^(?:OSError|RuntimeError): .*(?:No space left|write failed)", text, re.M))
        r["left_behind"] = sorted(p.relative_to(d).as_posix() for p in res.rglob("*")
                                  if p.is_file() and (".tmp" in p.name or p.name.endswith(".lock")))
        r["used_at_failure"] = shutil.disk_usage(res).used
        # the user frees space: the filesystem grows (the run needs more while it runs than it leaves: training
        # checkpoints with their optimiser state live until a fit ends), and make all runs again
        grown = max(1 << 30, 8 * need)
        subprocess.run(["mount", "-o", f"remount,size={grown}", str(res)], check=True)
        r["grown_bytes"] = grown
        t0 = time.monotonic()
        with open(work / "disk-full-2.log", "wb") as log:
            r["rerun_rc"], r["rerun_peak_bytes"] = _watch(make_all(d, profile, venv, log), res)
        r["rerun_s"] = round(time.monotonic() - t0, 1)
        r["diffs"] = compare(ref, outputs(d, profile)) if r["rerun_rc"] == 0 else ["rerun failed"]
        r["held"] = (r["first_rc"] != 0 and bool(r["message"]) and not r["left_behind"] and r["rerun_rc"] == 0
                     and not r["diffs"])
    finally:
        subprocess.run(["umount", "-l", str(res)], capture_output=True)
    return r


def stage_kills(work: Path, ref_dir: Path, ref: dict, profile: str, venv: Path, stages: list[str],
                rng: random.Random) -> dict:
    """Case 5: for each stage in ``stages``, start `make all` (resuming what the kills before left), wait until that
    stage starts, SIGKILL the whole group at uniform(0.1, 0.9) x the stage's duration in the reference run; then a run
    to the end, compared with the reference."""
    d = clone(work / "stage-kills")
    ref_s = {}
    for t in (ref_dir / "results" / profile / "timings").glob("*.txt"):
        name, secs = t.read_text().split()[:2]
        ref_s[name[:2]] = float(secs)
    log_path = work / "stage-kills.log"
    kills = []
    for stage in [x.strip() for x in stages if x.strip()]:
        with open(log_path, "ab") as log:
            mark = log_path.stat().st_size
            p = make_all(d, profile, venv, log)
            started = None
            while p.poll() is None:
                tail = log_path.read_bytes()[mark:].decode(errors="replace")
                if re.search(rf"^== {re.escape(stage)}_", tail, re.M):
                    started = time.monotonic()
                    break
                time.sleep(0.2)
            if started is None:
                kills.append({"stage": stage, "killed": False, "why": f"make ended (rc {p.returncode}) before it"})
                continue
            delay = rng.uniform(0.1, 0.9) * ref_s.get(stage, 5.0)
            try:
                p.wait(timeout=delay)
                kills.append({"stage": stage, "killed": False, "why": f"make ended (rc {p.returncode}) first"})
                continue
            except subprocess.TimeoutExpired:
                pass
            tail = log_path.read_bytes()[mark:].decode(errors="replace")
            now = running(tail)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            kills.append({"stage": stage, "killed": True, "after_s": round(delay, 1),
                          "of_s": ref_s.get(stage), "running": ",".join(now)})
            print(f"aimed kill: SIGKILL {delay:.1f} s into {stage} (running: {','.join(now)})", flush=True)
    with open(log_path, "ab") as log:
        rc = make_all(d, profile, venv, log).wait()
    diffs = compare(ref, outputs(d, profile)) if rc == 0 else ["the run after the kills failed"]
    return {"kills": kills, "rc": rc, "diffs": diffs,
            "held": rc == 0 and not diffs and all(k["killed"] for k in kills)}


def stage_kills_markdown(r: dict) -> str:
    rows = [f"| {k['stage']} | " + (f"SIGKILL {k['after_s']} s into it (reference: {k['of_s']} s); running: {k['running']}"
                                    if k["killed"] else f"not killed: {k['why']}") + " |" for k in r["kills"]]
    return "\n".join([
        f"# Aimed kills ({r['profile']}, {r['date']}, {r['cpu']}, commit {r['commit']})", "",
        "| stage | kill |", "|---|---|", *rows, "",
        f"Then `make all` to the end: exit status {r['rc']}; end state against the undisturbed reference "
        f"({r['reference_s']} s): " + ("every table, figure and token store byte-identical" if not r["diffs"] else
                                       "; ".join(r["diffs"][:20])) + f" (by presence only: {', '.join(VOLATILE)}). "
        f"Held: {'yes' if r['held'] else 'no'}.", "",
        "Reproduce: `python tools/chaos.py --profile smoke --cases stages --stage-kills 01,06`.", ""])


def _watch(p: subprocess.Popen, path: Path) -> tuple[int, int]:
    """Wait for ``p``, sampling the space used on ``path``'s filesystem every 0.2 s: (exit status, peak bytes)."""
    peak = 0
    while p.poll() is None:
        peak = max(peak, shutil.disk_usage(path).used)
        time.sleep(0.2)
    return p.returncode, max(peak, shutil.disk_usage(path).used)


def disk_full_markdown(r: dict) -> str:
    head = f"# Full disk ({r['profile']}, {r['date']}, {r['cpu']}, commit {r['commit']})"
    if "not_tried" in r:
        return f"{head}\n\nNot tried: {r['not_tried']}.\n"
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    return "\n".join([
        head, "",
        f"`results/{r['profile']}` on a tmpfs of {mib(r['tmpfs_bytes'])} (the undisturbed run leaves "
        f"{mib(r['results_bytes'])} there). `make all` stopped in stage {r['stage']} with exit status {r['first_rc']} "
        f"after {r['first_s']} s, {mib(r['used_at_failure'])} in use, and said:", "",
        f"> {r['message'] or '(no disk-full message found in the log)'}", "",
        f"Partial files left behind: {', '.join(r['left_behind']) or 'none'}; raw OSError / RuntimeError tracebacks "
        f"about the full disk: {r['raw_tracebacks']}. After the filesystem grew to {mib(r['grown_bytes'])}, `make all` "
        f"again: exit status {r['rerun_rc']} in {r['rerun_s']} s, at most {mib(r['rerun_peak_bytes'])} in use while it "
        "ran; end state against the reference: "
        + ("every table, figure and token store byte-identical" if not r["diffs"] else "; ".join(r["diffs"][:20]))
        + f" (by presence only: {', '.join(VOLATILE)}). Held: {'yes' if r['held'] else 'no'}.", "",
        "Reproduce (root: it mounts a tmpfs): `python tools/chaos.py --profile smoke --cases disk-full`.", ""])


def markdown(r: dict) -> str:
    kills = r["kills"]
    by_stage: dict[str, int] = {}
    for k in kills:
        for s in k["stage"].split(","):
            by_stage[s] = by_stage.get(s, 0) + 1
    lines = [f"# Chaos run ({r['profile']}, {r['date']}, {r['cpu']}, commit {r['commit']})", "",
             "| case | tried | held | detail |", "|---|---:|---|---|",
             f"| SIGKILL of the whole `make all` at a random moment, then rerun | "
             f"{sum(k['signal'] == 'SIGKILL' for k in kills)} | {'yes' if not r['chaos_diffs'] else 'no'} | "
             f"kills per stage running: {', '.join(f'{s}: {n}' for s, n in sorted(by_stage.items()))} |",
             f"| Ctrl-C (SIGINT to the group) at a random moment, then rerun | {sum(k['signal'] == 'SIGINT' for k in kills)} | "
             f"{'yes' if not r['chaos_diffs'] and not r['failures'] else 'no'} | {'; '.join(r['failures']) or 'every one stopped make'} |",
             f"| checkout path with spaces and non-ASCII (`chaos dir — ü ñ`) | 1 | {'yes' if r['chaos_rc'] == 0 else 'no'} | "
             "the interrupted runs above ran there |",
             f"| two `make all` started together in one checkout | 1 | {'yes' if not r['concurrent_diffs'] else 'no'} | "
             f"exit statuses {r['concurrent_rcs']} |", "",
             f"End state after the interruptions, against the undisturbed reference ({r['reference_s']} s): "
             + ("every table, figure and token store byte-identical" if not r["chaos_diffs"] else
                "; ".join(r["chaos_diffs"][:20])) + f" (files compared by presence only: {', '.join(VOLATILE)}).",
             "", "Concurrent runs against the reference: " + ("byte-identical" if not r["concurrent_diffs"] else
                                                            "; ".join(r["concurrent_diffs"][:20])) + ".", "",
             "Reproduce: `python tools/chaos.py --profile smoke --kills 30`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
