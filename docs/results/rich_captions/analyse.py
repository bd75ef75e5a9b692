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


def room(root: Path) -> dict | None:
    """Stage 1b: every CFG and hot-CFG point against the base (paired over prompts), judged by the rich
    scorer, and the room: the best-quality point whose diversity is at least the base's."""
    runs = [root / f"room_g{g}" for g in (2, 3) if (root / f"room_g{g}" / "results.json").exists()]
    if not runs:
        return None
    rows, base = {}, None
    for run in runs:
        systems = json.loads((run / "results.json").read_text())["systems"]
        base = next(s for s in systems if s["name"] == "base")
        for s in systems:
            row = {k: s.get(k) for k in ("label", "gamma", "temperature", "quality", "diversity", *POOLED) if k in s}
            for m in ("quality", "diversity"):
                d = np.array(s["per_prompt"][m]) - np.array(base["per_prompt"][m])
                row[f"d_{m}"] = [float(d.mean()), *bootstrap(d)]
            rows[s["name"]] = row
    wide = [n for n, r in rows.items() if n != "base" and r["diversity"] >= rows["base"]["diversity"]]
    best = max(wide, key=lambda n: rows[n]["quality"]) if wide else None
    return {"systems": rows, "room": {"system": best, "d_quality": rows[best]["d_quality"] if best else None},
            "interpolated": interpolated_room(rows)}


def interpolated_room(rows: dict) -> float | None:
    """Not the plan's figure: each γ's τ curve, linearly interpolated at the base's diversity, minus the
    base's quality; the larger over γ (None where no curve brackets the base's diversity)."""
    d0, q0, best = rows["base"]["diversity"], rows["base"]["quality"], None
    for g in sorted({r["gamma"] for n, r in rows.items() if n != "base"}):
        pts = sorted((r["diversity"], r["quality"]) for n, r in rows.items() if n != "base" and r["gamma"] == g)
        for (da, qa), (db, qb) in zip(pts, pts[1:]):
            if da <= d0 <= db and db > da:
                q = qa + (qb - qa) * (d0 - da) / (db - da) - q0
                best = q if best is None else max(best, q)
    return best


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
    out["stage_1b"] = room(root)
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
    print_room(out["stage_1b"])
    plot(out, Path(__file__).parent / "plane.png")


def plot(out: dict, png: Path) -> None:
    """Left: attribute accuracy at γ = 1 and 3 for both bases; right: stage 1b's plane."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if out.get("stage_1b") else 1, figsize=(12, 4.2), squeeze=False)
    ax = axes[0][0]
    cols = [c for c in POOLED if any(c in s for s in out["systems"].values())]
    bars = [("control/base", "control γ=1"), ("control/cfg_g3", "control CFG γ=3"),
            ("rich/base", "rich γ=1"), ("rich/cfg_g3", "rich CFG γ=3")]
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        ys = [out["systems"][key].get(c, np.nan) for c in cols]
        ax.bar(np.arange(len(cols)) + (i - 1.5) * width, ys, width, label=label,
               color=["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"][i])
    ax.set_xticks(range(len(cols)), [c.removeprefix("attr_").replace("_", " ") for c in cols], rotation=30)
    ax.set_ylabel("share of generations that hit")
    ax.set_title("attribute accuracy, 128 validation prompts × 4")
    ax.legend(fontsize=8)
    if out.get("stage_1b"):
        ax = axes[0][1]
        rows = out["stage_1b"]["systems"]
        for g, colour in ((2.0, "#3182bd"), (3.0, "#e6550d")):
            pts = sorted((r["temperature"], r["diversity"], r["quality"]) for r in rows.values() if r["gamma"] == g)
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", color=colour,
                    label=f"CFG γ={g:g}, τ = 1 … 1.45")
        b = rows["base"]
        ax.plot([b["diversity"]], [b["quality"]], "k*", ms=12, label="rich base (γ=1)")
        ax.set_xlabel("diversity (E)")
        ax.set_ylabel("quality (scorer trained on the rich captions)")
        ax.set_title("stage 1b: hot CFG against the base")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def print_room(r: dict | None) -> None:
    if r is None:
        return
    ci = lambda v: f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"  # noqa: E731
    print("\n| stage 1b: rich base, rich scorer | quality | diversity | Δ quality vs base [95%] | "
          "Δ diversity vs base [95%] | register | range | motion | steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in sorted(r["systems"].items(), key=lambda kv: (kv[1]["gamma"], kv[1]["temperature"])):
        attrs = " | ".join(f"{s[c]:.0%}" if c in s else "" for c in POOLED[4:])
        print(f"| {s['label']} | {s['quality']:.3f} | {s['diversity']:.3f} | "
              + (f"{ci(s['d_quality'])} | {ci(s['d_diversity'])}" if name != "base" else " | ") + f" | {attrs} |")
    room_ = r["room"]
    none = "none: every CFG point is less diverse than the base"
    print(f"\n- room: {room_['system']} "
          + (f"{ci(room_['d_quality'])} of quality at no less diversity than the base" if room_["system"] else none))
    if r["interpolated"] is not None:
        print(f"- not the plan's figure: the hot-CFG curve interpolated at the base's diversity is "
              f"{r['interpolated']:+.3f} of quality above the base")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/rich"))
