"""The hot-teacher students against the presets' diversity students, paired on the same validation prompts.

    python docs/results/hot_teacher/paired.py runs/hot     # after the select runs of README.md

For candidates A and B (3 seeds each), per prompt d_k = mean over A's seeds − mean over B's seeds;
Δ = mean_k d_k and SE² = s²_prompts/P + s²_seeds(A)/S + s²_seeds(B)/S (each seed's mean over prompts; the
seeds of A and B are trained independently). Prints the table and writes paired.md beside this file.
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PAIRS = [("add_b0_t2_hot1.3", "add_b15_fromb0"), ("add_b0_hot1.3", "add_b15_fromb0")]
LABELS = {"add_b0_t2_hot1.3": "β=0, teacher CFG γ=2 at τ=1.3", "add_b0_hot1.3": "β=0, teacher CFG γ=3 at τ=1.3",
          "add_b15_fromb0": "β=15 from β=0 (the presets')"}


def per_seed(root: Path, stem: str, metric: str) -> np.ndarray:
    rows = []
    for sfx in ("", "_s1", "_s2"):
        systems = json.loads((root / f"eval_{stem}{sfx}" / "results.json").read_text())["systems"]
        rows.append(next(s for s in systems if s["name"] == "base")["per_prompt"][metric])
    return np.asarray(rows, np.float64)   # S × P


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/hot")
    lines = ["| A − B (validation, 128 prompts × 4, 3 seeds each) | Δ quality ± SE | Δ diversity ± SE |", "|---|---|---|"]
    for a, b in PAIRS:
        cells = []
        for metric in ("quality", "diversity"):
            A, B = per_seed(root, a, metric), per_seed(root, b, metric)
            d = A.mean(0) - B.mean(0)
            se = np.sqrt(d.var(ddof=1) / d.size + A.mean(1).var(ddof=1) / len(A) + B.mean(1).var(ddof=1) / len(B))
            cells.append(f"{d.mean():+.3f} ± {se:.3f}")
        lines.append(f"| {LABELS[a]} − {LABELS[b]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (HERE / "paired.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
