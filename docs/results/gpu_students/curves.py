"""Training curves of the GPU students (docs/results/gpu_students): 40-step means over the three seeds
of the 480-step runs. Usage: python docs/results/gpu_students/curves.py RUN_DIR (the unpacked
gpu_students.tgz) → curves.md and training_curves.png beside this file."""
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KEYS = {"reward/diversity/mean": "diversity reward", "kl/teacher": "KL(student ‖ teacher)",
        "entropy": "entropy", "completions/mean_length": "sample length"}
run = Path(sys.argv[1])
here = Path(__file__).parent
logs = [[json.loads(line) for line in (run / f"add_b15_steps480{s}" / "metrics.jsonl").open()]
        for s in ("", "_s1", "_s2")]
windows = range(0, 480, 40)
means = {k: [np.mean([r[k] for log in logs for r in log if "loss" in r and lo < r["step"] <= lo + 40])
             for lo in windows] for k in KEYS}
lines = ["| steps | " + " | ".join(KEYS.values()) + " |", "|---" * (len(KEYS) + 1) + "|"]
lines += [f"| {lo + 1}–{lo + 40} | " + " | ".join(f"{means[k][i]:.3f}" for k in KEYS) + " |" for i, lo in enumerate(windows)]
(here / "curves.md").write_text("40-step means over seeds 0, 1, 2 of the 480-step runs (training samples, ≤160 tokens)\n\n"
                                + "\n".join(lines) + "\n")
fig, axes = plt.subplots(1, len(KEYS), figsize=(14, 3))
x = [lo + 20 for lo in windows]
for ax, (k, label) in zip(axes, KEYS.items()):
    for log, seed in zip(logs, (0, 1, 2)):
        steps = [r["step"] for r in log if "loss" in r]
        v = np.convolve([r[k] for r in log if "loss" in r], np.ones(20) / 20, mode="same")
        ax.plot(steps, v, lw=0.6, alpha=0.5, label=f"seed {seed}")
    ax.plot(x, means[k], "k-o", ms=3, label="40-step mean")
    for b in (120, 240):
        ax.axvline(b, color="grey", ls=":", lw=0.8)
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("step")
axes[0].legend(fontsize=7)
fig.tight_layout()
fig.savefig(here / "training_curves.png", dpi=110)
print("\n".join(lines))
