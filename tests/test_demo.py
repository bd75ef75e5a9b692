"""`divcfg demo --preset tiny` end to end: every stage runs, is recorded, and is cached on rerun."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file


def test_tiny_demo_end_to_end(tmp_path):
    root, data = tmp_path / "runs", tmp_path / "data"
    cmd = [sys.executable, "-m", "divcfg.cli", "demo", "--preset", "tiny", "--root", str(root),
           "--data-root", str(data)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("report: ") and last.endswith("report.html")
    record = json.loads((root / "demo.json").read_text())
    assert set(record["stages"]) >= {"data", "pretrain", "embedder", "scorer", "gamma", "finetune_beta0",
                                     "finetune_beta", "evaluate", "report"}
    assert record["provenance"]["git_commit"]
    assert record["provenance"]["started_at_commit"] == record["provenance"]["git_commit"]  # nothing changed meanwhile
    assert "source tree changed" not in r.stdout
    # γ* is the swept γ with the best validation alignment, and the students were distilled from it
    sweep = json.loads((root / "gamma_sweep" / "results.json").read_text())
    by_gamma = {float(s["gamma"]): float(s["quality"]) for s in sweep["systems"]
                if s["family"] in ("base", "cfg") and float(s.get("temperature", 1.0)) == 1.0}
    assert set(by_gamma) == {1.0, 1.5, 2.0}
    assert by_gamma[record["gamma_star"]] == max(by_gamma.values())
    for student in ("ft_beta0", "ft_beta15"):
        assert json.loads((root / student / "checkpoint" / "config.json").read_text())["gamma"] == record["gamma_star"]
    # every training stage finished (marker) and reached its planned steps: none was cut short
    for name, folder in (("pretrain", "base"), ("embedder", "embedder"), ("scorer", "scorer"),
                         ("finetune_beta0", "ft_beta0"), ("finetune_beta", "ft_beta15")):
        marker = json.loads((root / folder / "DONE.json").read_text())
        assert marker["finished"] and marker["steps_done"] == marker["steps_planned"] > 0, folder
        assert record["stages"][name]["cut_short"] is None
    results = json.loads((root / "eval" / "results.json").read_text())
    families = {s["family"] for s in results["systems"]}
    assert {"base", "cfg", "temperature", "finetuned", "merge"} <= families
    html = (root / "eval" / "report.html").read_text()
    assert "<table" in html and "<img" in html
    # a second run finds every stage cached
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert r2.stdout.count("cached, skipped") == 8
    # a stage without its completion marker is not cached: it is resumed, the others stay cached
    (root / "embedder" / "DONE.json").unlink()
    r3 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0, r3.stderr[-2000:]
    assert "embedder: resuming" in r3.stdout and r3.stdout.count("cached, skipped") == 7
    assert json.loads((root / "embedder" / "DONE.json").read_text())["finished"] is True
    # another diversity recipe: its own student folder (the β=0 student stays cached), and the
    # evaluation is redone because its students changed
    r4 = subprocess.run(cmd + ["--recipe", "additive:15:g4:fkl:t3:n40"], capture_output=True, text=True, timeout=600)
    assert r4.returncode == 0, r4.stderr[-2000:]
    assert "finetune_beta0: cached" in r4.stdout and "evaluate: running" in r4.stdout
    cfg = json.loads((root / "ft_beta15_g4_fkl_t3_n40" / "checkpoint" / "config.json").read_text())["finetune"]
    assert (cfg["divergence"], cfg["group_size"], cfg["baseline"], cfg["beta"], cfg["gamma"], cfg["max_new_tokens"]) == \
        ("forward_kl", 4, "loo", 15.0, 3.0, 40)
    record = json.loads((root / "demo.json").read_text())
    beta0 = json.loads((root / "ft_beta0" / "checkpoint" / "config.json").read_text())["finetune"]
    assert beta0["gamma"] == record["gamma_star"] != 3.0          # the β=0 student keeps distilling γ*
    assert record["diversity_recipe"] == {
        "form": "additive", "beta": 15.0, "group_size": 4, "divergence": "forward_kl", "teacher_gamma": 3.0,
        "train_tokens": 40, "train_steps": None, "reward_gate": "empty", "from_beta0": False,
        "teacher_temperature": 1.0}
    config = json.loads((root / "eval" / "results.json").read_text())["config"]
    assert config["diversity"] == str(root / "ft_beta15_g4_fkl_t3_n40")
    # a β=0 recipe with a hotter teacher: its own folder, beside the cached β=0 student, with the teacher's τ
    r5 = subprocess.run(cmd + ["--recipe", "additive:0:hot1.5"], capture_output=True, text=True, timeout=600)
    assert r5.returncode == 0, r5.stderr[-2000:]
    assert "finetune_beta0: cached" in r5.stdout
    hot = json.loads((root / "ft_beta0_hot1.5" / "checkpoint" / "config.json").read_text())["finetune"]
    assert (hot["beta"], hot["teacher_temperature"], hot["gamma"]) == (0.0, 1.5, record["gamma_star"])
    assert json.loads((root / "ft_beta0" / "checkpoint" / "config.json").read_text())["finetune"]["teacher_temperature"] == 1.0
    bad = subprocess.run(cmd + ["--recipe", "additive:15:g3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --recipe takes")
    assert len(bad.stderr.strip().splitlines()) == 1

    # benchmarks/gpu_students.py on the CPU, from a root without a β=0 student (the reference then holds
    # the base alone): each seed's run is snapshotted at every step budget, each snapshot evaluated on
    # validation prompts, and the margin rule applied to the budgets every seed finished
    bare, work, out = tmp_path / "bare_root", tmp_path / "gs", tmp_path / "gs_out"
    bare.mkdir()
    (bare / "demo.json").write_text((root / "demo.json").read_text())
    for k in ("base", "embedder", "scorer"):
        (bare / k).symlink_to(root / k)
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_students.py"
    gs = subprocess.run([sys.executable, str(bench), str(out), "--device", "cpu", "--preset", "tiny", "--root", str(bare),
                         "--steps", "2,4", "--seeds", "0,1", "--num-prompts", "2", "--generations", "2",
                         "--work", str(work)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert gs.returncode == 0, gs.stdout[-2000:] + gs.stderr[-2000:]
    sel = json.loads((work / "select" / "selection.json").read_text())
    assert set(sel["rows"]) == {"base", "add_b15_steps2", "add_b15_steps4"} and sel["rule"] == "margin"
    assert sel["chosen"] in ("add_b15_steps2", "add_b15_steps4")
    for name, steps in (("add_b15_steps2", 2), ("add_b15_steps2_s1", 2), ("add_b15_steps4", 4), ("add_b15_steps4_s1", 4)):
        assert json.loads((work / "select" / name / "DONE.json").read_text())["steps_done"] == steps
        assert json.loads((work / "select" / f"eval_{name}" / "results.json").read_text())["num_prompts"] == 2
    with tarfile.open(out / "gpu_students.tgz") as tar:
        names = tar.getnames()
    assert "selection.json" in names and "eval_add_b15_steps4_s1/results.json" in names
    assert not [n for n in names if n.endswith((".pt", ".safetensors")) or n.startswith("work_s")]
    # the 4-step snapshot (2 steps, then resumed to 4) is the straight 4-step run, bit for bit (with the
    # driver's DIVCFG_CAPTIONS_FROM_CACHE=1)
    straight = subprocess.run([sys.executable, "-c", (
        "import dataclasses, sys; from pathlib import Path; from divcfg.cli import run_command; "
        "from divcfg.recipe import parse_candidates; from divcfg.selection import SelectionRun; "
        f"r = SelectionRun.open('tiny', {str(bare)!r}, {str(tmp_path / 'straight')!r}); "
        "c = dataclasses.replace(parse_candidates('additive:15')[0], steps=4); "
        "run_command(r.finetune_args(c, 0))")], capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "DIVCFG_CAPTIONS_FROM_CACHE": "1"})
    assert straight.returncode == 0, straight.stderr[-2000:]
    a = load_file(str(tmp_path / "straight" / "add_b15_steps4" / "checkpoint" / "model.safetensors"))
    b = load_file(str(out / "weights_add_b15_steps4.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
