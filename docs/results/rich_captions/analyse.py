"""Stage 1 of PLAN.md: do rich captions give CFG more to do? Validation only.

    python docs/results/rich_captions/analyse.py runs/rich          # prints results.md, writes summary.json

Reads, under ROOT: ``control/`` and ``rich/`` (the two continued bases, `divcfg pretrain --init`),
``step0_control/`` and ``step0_rich/`` (the shipped base evaluated on each data set, 0 steps), and
``eval_control/`` and ``eval_rich/`` (`divcfg evaluate --split val` at γ = 1 and 3).

Per prompt, the pooled attribute accuracy is the share of (generation, named attribute) pairs that
hit, over key (relative), meter, bars, length word and the four descriptors, whichever its caption
names; CFG's gain is its γ = 3 value minus its γ = 1 value. The rule compares the rich base's gain
with the control's, paired by validation piece, with a percentile bootstrap over pieces.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

POOLED = ("attr_key_relative", "attr_meter", "attr_bars_exact", "attr_length_word",
          "attr_register", "attr_range", "attr_motion", "attr_steps")
MARGIN = 0.03


def final_val(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val/nll_cond" in x]
    v = rows[-1]
    return {"step": v["step"], "nll_cond": v["val/nll_cond"], "nll_uncond": v["val/nll_uncond"],
            "prompt_share": v["val/nll_uncond"] - v["val/nll_cond"]}


def pooled_by_prompt(run: Path, system: str) -> dict[str, float]:
    """prompt id -> pooled attribute accuracy of ``system``'s generations."""
    from divcfg.music.attributes import attribute_accuracy
    from divcfg.music.tokenizer import load_tokenizer

    res = json.loads((run / "results.json").read_text())
    tok = load_tokenizer(res["config"]["data_dir"])
    prompts = {p["index"]: p for p in res["prompts"]}
    hits: dict[str, list[float]] = {}
    for line in (run / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        if s["system"] != system:
            continue
        p = prompts[s["prompt_index"]]
        rates = attribute_accuracy(tok, [s["tokens"]], [p["text"]], [p["meta"]])
        hits.setdefault(p["id"], []).extend(rates[c] for c in POOLED if c in rates and not math.isnan(rates[c]))
    return {pid: float(np.mean(h)) for pid, h in hits.items() if h}


def bootstrap(x: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main(root: Path) -> None:
    out: dict = {"nll": {}, "systems": {}, "gain": {}}
    for name in ("step0_control", "step0_rich", "control", "rich"):
        if (root / name / "metrics.jsonl").exists():
            out["nll"][name] = final_val(root / name)
    gains = {}
    for name in ("control", "rich"):
        run = root / f"eval_{name}"
        res = json.loads((run / "results.json").read_text())
        for s in res["systems"]:
            out["systems"][f"{name}/{s['name']}"] = {k: s.get(k) for k in ("quality", "diversity", "valid_rate",
                                                                          "mean_length", *POOLED) if k in s}
        g1, g3 = pooled_by_prompt(run, "base"), pooled_by_prompt(run, "cfg_g3")
        gains[name] = {pid: g3[pid] - g1[pid] for pid in g1 if pid in g3}
        out["systems"][f"{name}/base"]["pooled"] = float(np.mean(list(g1.values())))
        out["systems"][f"{name}/cfg_g3"]["pooled"] = float(np.mean(list(g3.values())))
        x = np.array(list(gains[name].values()))
        out["gain"][name] = {"mean": float(x.mean()), "ci95": bootstrap(x), "prompts": len(x)}
    common = sorted(set(gains["control"]) & set(gains["rich"]))
    d = np.array([gains["rich"][p] - gains["control"][p] for p in common])
    lo, hi = bootstrap(d)
    out["rich_minus_control"] = {"mean": float(d.mean()), "ci95": [lo, hi], "prompts": len(common)}
    out["rule"] = {"margin": MARGIN, "passes": bool(d.mean() >= MARGIN and lo > 0)}
    (Path(__file__).parent / "summary.json").write_text(json.dumps(out, indent=1) + "\n")

    print("| base (validation, all pieces) | step | NLL with / without prompt | prompt's share, nats/token |")
    print("|---|---|---|---|")
    for name, v in out["nll"].items():
        print(f"| {name} | {v['step']} | {v['nll_cond']:.3f} / {v['nll_uncond']:.3f} | {v['prompt_share']:.4f} |")
    print()
    cols = [c for c in POOLED if any(c in s for s in out["systems"].values())]
    print("| system (128 val prompts × 4) | quality | diversity | pooled attr. | "
          + " | ".join(c.removeprefix("attr_") for c in cols) + " |")
    print("|---" * (4 + len(cols)) + "|")
    for name, s in out["systems"].items():
        cells = [f"{s[c]:.0%}" if c in s and s[c] is not None and not math.isnan(s[c]) else "" for c in cols]
        print(f"| {name} | {s['quality']:.3f} | {s['diversity']:.3f} | {s['pooled']:.1%} | " + " | ".join(cells) + " |")
    print()
    for name, g in out["gain"].items():
        print(f"- CFG γ=3's gain in pooled attribute accuracy, {name}: {g['mean']:+.3f} "
              f"[{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}] ({g['prompts']} prompts)")
    r = out["rich_minus_control"]
    print(f"- rich − control (paired by piece): {r['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] over {r['prompts']} prompts; "
          f"the rule (≥ {MARGIN} with the interval above 0) {'passes' if out['rule']['passes'] else 'does not pass'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/rich"))
