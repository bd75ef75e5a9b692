"""`divcfg demo --preset tiny` end to end: every stage runs, is recorded, and is cached on rerun."""

import json
import subprocess
import sys


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
    assert record["gamma_star"] in (1.0, 1.5, 2.0) and record["provenance"]["git_commit"]
    results = json.loads((root / "eval" / "results.json").read_text())
    families = {s["family"] for s in results["systems"]}
    assert {"base", "cfg", "temperature", "finetuned", "merge"} <= families
    html = (root / "eval" / "report.html").read_text()
    assert "<table" in html and "<img" in html
    # a second run finds every stage cached
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert r2.stdout.count("cached, skipped") == 8
