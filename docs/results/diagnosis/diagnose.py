"""Why the diversity student does not beat the base here: training curves and validation figures of
the diversity-student variants (issue 11). Reads the runs that the commands in README.md of this
folder make, writes ``training_curves.png`` and ``validation.md`` next to this file.

    python docs/results/diagnosis/diagnose.py

Validation differences are *paired*: each variant and the base are evaluated on the same 48
validation prompts × 4 generations with the same sampling seed; the interval is a percentile
bootstrap over prompts (2,000 replicates, seed 0) of the per-prompt difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
REFERENCE = ROOT / "runs/select/eval_reference/results.json"
# label: (training run folder, validation results.json)
VARIANTS = {
    "β=0 (demo)": ("runs/demo/ft_beta0", None),
    "β=5, G=2 (demo), 120 steps": ("runs/select/add_b5", "runs/select/eval_add_b5/results.json"),
    "β=5, G=2, 240 steps": ("runs/long/b5", "runs/long/eval_b5@240/results.json"),
    "β=5, G=4 LOO, 120 steps": ("runs/select/add_b5_g4", "runs/select/eval_add_b5_g4/results.json"),
    "β=5, G=4 LOO, 240 steps": ("runs/long/b5_g4", "runs/long/eval_b5_g4@240/results.json"),
    "β=10, G=4 LOO, 120 steps": ("runs/select/add_b10_g4", "runs/select/eval_add_b10_g4/results.json"),
    "β=50, G=4 LOO, 120 steps": ("runs/long/diag_b50_g4", "runs/long/eval_diag_b50_g4@120/results.json"),
    "β=5, G=4 LOO, lr 5e-4, 120 steps": ("runs/long/diag_lr5e4_g4", "runs/long/eval_diag_lr5e4_g4@120/results.json"),
    "β=5, G=4 LOO, forward KL, 120 steps": ("runs/long/diag_fkl_g4", "runs/long/eval_diag_fkl_g4@120/results.json"),
    "β=2, G=4 LOO, forward KL, 120 steps": ("runs/long/fkl_b2_g4", "runs/long/eval_fkl_b2_g4@120/results.json"),
    "β=0, G=4, forward KL, 120 steps (control)": ("runs/long/fkl_b0_g4", "runs/long/eval_fkl_b0_g4@120/results.json"),
    "β=5, G=2 (demo), seed 1": ("runs/long/b5_s1", "runs/long/eval_b5_s1/results.json"),
    "β=5, G=2, 32 samples/step, seed 0": ("runs/long/b5_p16_s0", "runs/long/eval_b5_p16_s0/results.json"),
    "β=5, G=2, 32 samples/step, seed 1": ("runs/long/b5_p16_s1", "runs/long/eval_b5_p16_s1/results.json"),
    "length reward, β=5, G=2": ("runs/select/len_b5", "runs/select/eval_len_b5/results.json"),
    "length reward, β=10, G=2": ("runs/select/len_b10", "runs/select/eval_len_b10/results.json"),
    "length reward, β=50, G=4 LOO": ("runs/select/len_b50_g4", "runs/select/eval_len_b50_g4/results.json"),
    "β=5, G=2, teacher γ=2": ("runs/select/add_b5_t2", "runs/select/eval_add_b5_t2/results.json"),
    "β=5, G=2, teacher γ=3": ("runs/select/add_b5_t3", "runs/select/eval_add_b5_t3/results.json"),
    "β=5, G=4 LOO, forward KL, teacher γ=2": ("runs/select/add_b5_g4_fkl_t2", "runs/select/eval_add_b5_g4_fkl_t2/results.json"),
    "β=5, G=4 LOO, forward KL, teacher γ=3": ("runs/select/add_b5_g4_fkl_t3", "runs/select/eval_add_b5_g4_fkl_t3/results.json"),
}
# the 240-step runs continue the 120-step ones (same run folder copied, then resumed): plot each once
PREFIX_OF = {"β=5, G=2 (demo), 120 steps": "β=5, G=2, 240 steps", "β=5, G=4 LOO, 120 steps": "β=5, G=4 LOO, 240 steps"}
CURVES = ("reward/diversity/mean", "kl/teacher", "entropy", "completions/mean_length")


def per_prompt(path: Path, name: str = "base") -> dict[str, np.ndarray]:
    system = next(s for s in json.loads(path.read_text())["systems"] if s["name"] == name)
    return {k: np.asarray(v, np.float64) for k, v in system["per_prompt"].items()}


def paired(diff: np.ndarray, idx: np.ndarray) -> str:
    boot = np.array([np.nanmean(diff[i]) for i in idx])
    return f"{np.nanmean(diff):+.3f} [{np.percentile(boot, 2.5):+.3f}, {np.percentile(boot, 97.5):+.3f}]"


def validation_table() -> str:
    base, beta0 = per_prompt(REFERENCE), per_prompt(REFERENCE, "distilled")
    idx = np.random.default_rng(0).integers(0, len(base["quality"]), (2000, len(base["quality"])))
    lines = ["| variant | Δquality vs base | Δdiversity vs base | Δdiversity vs β=0 | Δpitch-class distance vs base |",
             "|---|---|---|---|---|"]
    for label, (_, res) in VARIANTS.items():
        v = beta0 if res is None else per_prompt(ROOT / res)
        lines.append(f"| {label} | {paired(v['quality'] - base['quality'], idx)} "
                     f"| {paired(v['diversity'] - base['diversity'], idx)} "
                     f"| {paired(v['diversity'] - beta0['diversity'], idx)} "
                     f"| {paired(v['pitch_class_distance'] - base['pitch_class_distance'], idx)} |")
    return "\n".join(lines)


def plot_curves(out: Path, window: int = 20) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 5.0))
    colours = iter(plt.get_cmap("tab20").colors)            # up to 20 curves: tab10 would repeat colours
    for label, (run, _) in VARIANTS.items():
        if label in PREFIX_OF:
            continue
        colour = next(colours)
        rows = [r for r in map(json.loads, (ROOT / run / "metrics.jsonl").read_text().splitlines()) if "kl/teacher" in r]
        steps = np.array([r["step"] for r in rows])
        for ax, key in zip(axes, CURVES):
            y = np.array([r[key] for r in rows], np.float64)
            smooth = np.convolve(y, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, label=label, lw=1.4, color=colour,
                    ls="--" if "teacher γ" in label else ":" if "length" in label else "-")
    for ax, key in zip(axes, CURVES):
        ax.set_title(f"{key} ({window}-step mean)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.24, 1, 1))
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    table = validation_table()
    (HERE / "validation.md").write_text(
        "Paired differences on 48 validation prompts × 4 generations (bootstrap over prompts, 95%):\n\n" + table + "\n")
    plot_curves(HERE / "training_curves.png")
    print(table)
