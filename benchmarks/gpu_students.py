"""Issue 11 on a lent GPU: does more RL compute let the diversity reward pay? (docs/results/gpu_students/PLAN.md)

The demo's diversity student (additive β=15, CFG γ*=3 teacher, the `demo` fine-tuning preset) trains for
120 steps of 16 samples on the CPU, and its training reward stays flat (docs/results/diagnosis). This
trains it for the step budgets ``--steps`` (default 120, 240, 480) as snapshots of one run per seed: the
learning rate is constant after its warm-up, and a resume restores the optimizer, schedule and random
streams, so the 240-step snapshot is the 240-step run. Each snapshot is evaluated on the validation
prompts exactly as `divcfg select` evaluates a candidate (its folders, commands and rule:
``divcfg.selection.SelectionRun``), beside the base on the same prompts and sampling seed, and the
margin rule picks among the budgets that every seed finished. One process per seed and one for the
base's evaluation share the GPU.

    python benchmarks/gpu_students.py OUTDIR [--device cuda] [--steps 120,240,480] [--seeds 0,1,2]
        [--num-prompts 128] [--minutes 5.0] [--preset demo --root DEMO_ROOT]

``--minutes`` caps each seed's training time (summed over its budgets); a budget it cuts short is
recorded and left out of the rule. Everything comes back in OUTDIR (at most 8 files, for the device
tool): gpu_students.tgz (the selection table and plot, every evaluation, every snapshot's training
log, markers and config), the longest budget's weights per seed (``weights_<name>.safetensors``) and
env.txt. Needs data/small (unpacked from .gpu/pretrain when missing) and the shipped weights, installed
into a fresh demo root with γ*=3; ``--root`` uses an existing demo root instead (its γ*, checkpoints and
β=0 student), and ``--preset tiny`` with it is the test suite's run on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GAMMA_STAR = 3.0   # the demo's γ*, chosen on validation prompts by its gamma stage (runs/demo/demo.json, README)
RECIPE = "additive:15"  # the demo's diversity recipe (divcfg/demo.py PRESETS)


def prepare_data(data_dir: Path, packed: Path) -> None:
    """data/small from the carried .gpu/pretrain (``*.gz`` unpacked) where it is missing."""
    if (data_dir / "val.jsonl").exists():
        return
    import gzip
    data_dir.mkdir(parents=True, exist_ok=True)
    for f in packed.iterdir():
        if f.suffix == ".gz":
            with gzip.open(f, "rb") as src, open(data_dir / f.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy(f, data_dir / f.name)


def prepare_root(root: Path) -> None:
    """A demo root holding the verified shipped base, E and scorer, and γ* (as `divcfg demo` installs them)."""
    from divcfg.pretrained import install
    for comp in ("base", "embedder", "scorer"):
        dest = root / "shipped" / comp
        if not (dest / "checkpoint" if comp == "base" else dest).exists():
            install(dest / "checkpoint" if comp == "base" else dest, comp)
    (root / "demo.json").write_text(json.dumps({"gamma_star": GAMMA_STAR}))


def _run(kw: dict):
    from divcfg.selection import SelectionRun
    return SelectionRun.open(kw.pop("preset"), kw.pop("root"), kw.pop("out"), **kw)


def reference(kw: dict) -> None:
    _run(dict(kw)).reference()


def seed_chain(kw: dict, seed: int, steps: list[int], minutes: float) -> None:
    """Train one seed through the step budgets in one folder, snapshotting each; then evaluate the snapshots."""
    from divcfg.cli import run_command
    from divcfg.recipe import parse_candidates
    run = _run(dict(kw))
    base = parse_candidates(RECIPE)[0]
    work = run.out / f"work_s{seed}"
    done = []
    for n in steps:
        cand = dataclasses.replace(base, steps=n)
        t = time.time()
        run_command(run.finetune_args(cand, seed, out=work) + ["--max-minutes", f"{minutes:g}"])
        marker = json.loads((work / "DONE.json").read_text())
        snap = run.student(cand, seed)
        if snap.exists():
            shutil.rmtree(snap)
        shutil.copytree(work, snap, ignore=shutil.ignore_patterns("training_state.pt"))
        print(f"seed {seed}: {n} steps in {time.time() - t:.0f} s, cut short: {marker['cut_short']}", flush=True)
        done.append(cand)
        if marker["cut_short"]:
            break
    for cand in done:
        run.candidate(cand, seed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", default="120,240,480")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--num-prompts", type=int, default=128)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--work", default="runs/gpu_students")
    ap.add_argument("--preset", default="demo", help="the demo preset whose fine-tuning flags the students use")
    ap.add_argument("--root", default=None, help="an existing demo root (default: the shipped weights installed "
                    "into WORK/root with γ*=3)")
    a = ap.parse_args()
    # captions come from the data set's cache (the device has no MiniLM package); the spawned processes
    # inherit it. Session 10's GPU run used this (divcfg.embedders.text.captions_from_cache)
    os.environ["DIVCFG_CAPTIONS_FROM_CACHE"] = "1"
    steps, seeds = [int(x) for x in a.steps.split(",")], [int(x) for x in a.seeds.split(",")]
    final, work = Path(a.outdir), Path(a.work)
    final.mkdir(parents=True, exist_ok=True)
    if a.root is None:
        prepare_data(Path("data/small"), ROOT / ".gpu" / "pretrain")
        prepare_root(work / "root")
    kw = dict(preset=a.preset, root=a.root or str(work / "root"), out=str(work / "select"), num_prompts=a.num_prompts,
              generations=a.generations, threads=1, device=a.device)
    t0 = time.time()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=reference, args=(kw,))] + \
        [ctx.Process(target=seed_chain, args=(kw, s, steps, a.minutes)) for s in seeds]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print(f"training and evaluations: {time.time() - t0:.0f} s; exit codes {[p.exitcode for p in procs]}", flush=True)

    from divcfg.recipe import parse_candidates
    from divcfg.selection import run_selection
    from divcfg.stages import is_finished
    base = parse_candidates(RECIPE)[0]
    run = _run(dict(kw))
    finished = []
    for n in steps:
        cand = dataclasses.replace(base, steps=n)
        dirs = [run.student(cand, s) for s in seeds]
        if all(is_finished(d) and not json.loads((d / "DONE.json").read_text())["cut_short"]
               and (d.with_name(f"eval_{d.name}") / "results.json").exists() for d in dirs):
            finished.append(cand)
        else:
            print(f"{cand.name}: not every seed finished and was evaluated; left out of the rule", flush=True)
    if finished:
        run_selection(a.preset, kw["root"], finished, kw["out"], tuple(seeds), a.num_prompts, a.generations,
                      1, "margin", a.device)
    # what comes back: one archive (no weights, no training states) and the longest budget's weights
    sel = Path(kw["out"])
    with tarfile.open(final / "gpu_students.tgz", "w:gz") as tar:
        for f in sorted(sel.rglob("*")):
            rel = f.relative_to(sel)
            if f.is_file() and f.suffix not in (".safetensors", ".pt") and not rel.parts[0].startswith("work_s"):
                tar.add(f, arcname=str(rel))
    longest = dataclasses.replace(base, steps=steps[-1])
    for s in seeds:
        w = run.student(longest, s) / "checkpoint" / "model.safetensors"
        if w.exists():
            shutil.copy(w, final / f"weights_{run.student(longest, s).name}.safetensors")
    env = subprocess.run([sys.executable, "-c", "import sys, torch; print(sys.version.split()[0], torch.__version__, "
                          "torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"],
                         capture_output=True, text=True).stdout
    (final / "env.txt").write_text(env + f"wall {time.time() - t0:.0f} s\n")
    print(env, flush=True)
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    sys.exit(main())
