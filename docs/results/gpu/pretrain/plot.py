"""Validation NLL of the GPU pretraining runs (benchmarks/gpu_pretrain.sh): python plot.py → val_nll.png"""
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
choice = json.loads((here / "choice.json").read_text())
fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
for r in choice["runs"]:
    rows = [json.loads(line) for line in (here / f"base_{r['budget']}.val.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in rows]
    lw = 2.5 if r["budget"] == choice["chosen"] else 1.2
    ax[0].plot(steps, [x["val/nll_cond"] for x in rows], lw=lw, label=f"{r['budget']} steps")
    ax[1].plot(steps, [x["val/cond_gain"] for x in rows], lw=lw, label=f"{r['budget']} steps")
old = choice["former_cpu_base"]
ax[0].scatter([old["steps"]], [old["val/nll_cond"]], c="k", marker="x", zorder=5, label="former CPU base (660)")
ax[1].scatter([old["steps"]], [old["val/cond_gain"]], c="k", marker="x", zorder=5)
ax[0].set(xlabel="step", ylabel="validation NLL with the prompt (nats/token)", xscale="log", ylim=(0.5, 1.0))
ax[1].set(xlabel="step", ylabel="NLL without − with the prompt", xscale="log")
ax[0].legend(fontsize=8)
fig.suptitle(f"The shipped base's pretraining on an H100 (each budget its own cosine schedule; chosen: "
             f"{choice['chosen']})", fontsize=10)
fig.tight_layout()
fig.savefig(here / "val_nll.png", dpi=110)
