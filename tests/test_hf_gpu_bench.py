"""benchmarks/hf_gpu.py (issue 8's GPU check): README's "Bring your own model" commands, run on the CPU
here with --device cpu and two fine-tuning steps, so the script that goes to a lent GPU cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.hf_gpu import bag_of_words, prompt_overlap  # noqa: E402


def test_the_user_judges_score_what_they_claim():
    rows = bag_of_words(["a song song", "", "zzz"])
    assert rows.shape[0] == 3 and (rows.abs().sum(1) > 0).all()         # no zero row, even when empty
    assert rows[0].max() == 2.0 and rows[1].sum() == rows[2].sum() == 0.1
    assert prompt_overlap(["a calm song", "a calm song"], ["calm song here", "nothing"]) == [2 / 3, 0.0]


def test_the_readme_sequence_runs_and_is_checked(tmp_path):
    out = tmp_path / "hf.json"
    proc = subprocess.run([sys.executable, "benchmarks/hf_gpu.py", "--device", "cpu", "--steps", "2", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HF PATH OK on cpu" in proc.stdout
    for stage in ("finetune --base hf:", "merge hf:", "evaluate --base hf:", "sample --base hf:"):
        assert f"$ divcfg {stage}" in proc.stdout
    fig = json.loads(out.read_text())
    assert fig["beta0/steps"] == fig["beta5/steps"] == 2
    assert fig["merge/max_gap"] < 1e-5 and fig["evaluate/systems"] == 9
    assert all(fig[f"{s}/wall_s"] > 0 for s in ("finetune beta=0", "finetune beta=5", "merge", "evaluate", "sample"))
    assert fig["provenance"]["stage"] == "benchmark hf_gpu" and "git_commit" in fig["provenance"]
