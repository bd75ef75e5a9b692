"""The method's four claims, each stated in one sentence with its interval (issue 11, "Report").

Read from an evaluation's results (``divcfg evaluate``; several student seeds or one) on its held-out
prompts. Every interval is a percentile interval of the two-way bootstrap over prompts and seeds
(``divcfg.evaluation.seeds.TwoWayBootstrap``; over prompts alone with one seed), the same replicates for
every system, so differences are paired. Notation: ``q_X``, ``d_X`` are system X's mean quality and
diversity; γ* is the CFG scale the students were distilled from (``finetune.gamma`` of the β=0
student), else the CFG system of highest quality (said so).

(a) CFG γ* raises quality and lowers diversity vs base: ``Δq = q_γ* − q_base``, ``Δd = d_γ* − d_base``;
    holds when ``Δq > 0`` and ``Δd < 0``; significant when the interval of Δq lies above 0 and Δd's below.
(b) the β=0 student keeps ≥ 90 % of γ*'s quality gain at one pass per token: ratio
    ``r = (q_β0 − q_base) / (q_γ* − q_base)``; holds when ``r ≥ 0.9`` (and 1 pass/token); significant when
    the interval's lower bound is ≥ 0.9.
(c) the diversity student is more diverse than base and β=0 without falling below the base's quality:
    ``d_div − d_base > 0``, ``d_div − d_β0 > 0``, ``q_div − q_base ≥ 0``; significant when the two
    diversity intervals lie above 0 and the quality interval's lower bound is ≥ 0.
(d) the merge front is not below the CFG front: hypervolume difference ``HV(merge) − HV(cfg)`` (shared
    reference point) ≥ 0; significant when its interval lies above 0.

Verdicts: ``holds`` (significant at the printed level), ``holds at the point estimate, not
significant``, ``does not hold``, or ``not evaluated`` (a system is missing). With several seeds, each
claim's verdict at each seed's point estimate is listed too, and ``seeds_agree`` says whether they match.
"""

from __future__ import annotations

import json
import math

from divcfg.evaluation.seeds import TwoWayBootstrap, hypervolume_difference

HOLDS, POINT_ONLY, FAILS, MISSING = ("holds", "holds at the point estimate, not significant", "does not hold",
                                     "not evaluated")
GAIN_KEPT = 0.9


def _ci(v: tuple[float, float, float], digits: int = 3, signed: bool = True) -> str:
    p, lo, hi = v
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{f.format(p)} [{f.format(lo)}, {f.format(hi)}]"


def _ratio(a, b):
    """``a / b`` elementwise; nan where ``b`` is 0 (no gain to keep a share of)."""
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _verdict(point_ok: bool, significant: bool) -> str:
    return HOLDS if point_ok and significant else (POINT_ONLY if point_ok else FAILS)


def gamma_star(results: dict) -> tuple[str | None, str]:
    """The CFG system of γ* and where γ* came from."""
    cfg_rows = [r for r in results["systems"] if r["family"] == "cfg" and not r.get("aggregate_of")]
    if not cfg_rows:
        return None, "no CFG system"
    gamma = results.get("gamma_star")
    source = "given"
    if gamma is None:
        student = next((r for r in results["systems"] if r["name"] == "distilled"), None)
        ck = student and student.get("checkpoint")
        ck = ck[0] if isinstance(ck, list) else ck
        try:
            gamma = json.loads((_path(ck) / "config.json").read_text())["finetune"]["gamma"]
            source = "the β=0 student's teacher"
        except (OSError, ValueError, KeyError, TypeError):
            gamma = None
    if gamma is not None and math.isclose(float(gamma), 1.0):
        return "base", f"γ*=1 ({source}: no guidance was chosen)"
    match = [r for r in cfg_rows if gamma is not None and math.isclose(r["gamma"], float(gamma))]
    if match:
        return match[0]["name"], f"γ*={float(gamma):g} ({source})"
    best = max(cfg_rows, key=lambda r: r["quality"])
    why = "unknown" if gamma is None else f"{float(gamma):g} not evaluated"
    return best["name"], f"γ*={best['gamma']:g} (the best CFG quality on these prompts; γ* {why})"


def _path(spec: str):
    from pathlib import Path
    return Path(str(spec).removeprefix("hf:"))


def evaluate_claims(results: dict, n_boot: int = 1000, confidence: float = 0.95, seed: int = 2) -> dict:
    """``{"level", "method", "gamma_star", "claims": [{id, claim, verdict, holds, significant, sentence,
    estimates, per_seed, seeds_agree}]}``."""
    boot = TwoWayBootstrap(results, n_boot, confidence, seed)
    by = {r["name"]: r for r in results["systems"]}
    g, g_note = gamma_star(results)
    has = lambda *names: all(n in boot.arrays for n in names)  # noqa: E731
    labels = results.get("student_seeds") or []
    pct = f"{confidence:.0%}"
    claims = []

    def add(cid: str, text: str, needed: tuple, estimates_fn, judge_fn, sentence_fn):
        if not has(*[n for n in needed if n]) or None in needed:
            claims.append({"id": cid, "claim": text, "verdict": MISSING, "holds": None, "significant": None,
                           "sentence": f"({cid}) {text}: not evaluated (no "
                                       f"{', '.join(str(n or 'merge or CFG front') for n in needed if n not in boot.arrays)}"
                                       " system in this run).",
                           "estimates": {}, "per_seed": {}, "seeds_agree": None})
            return
        est = estimates_fn()
        point_ok, significant = judge_fn(est)
        per_seed = {}
        for s, label in enumerate(labels):
            pts = {n: boot.seed_point(n, s) for n in boot.arrays}
            per_seed[label] = bool(judge_fn({k: (f(pts), math.nan, math.nan) for k, f in est["_fns"].items()})[0])
        est = {k: list(v) for k, v in est.items() if k != "_fns"}
        verdict = _verdict(point_ok, significant)
        agree = (len(set(per_seed.values())) <= 1) if per_seed else None
        seeds = ""
        if per_seed:
            seeds = (f" Per seed (point estimates): {', '.join(f's{k}: ' + ('yes' if v else 'no') for k, v in per_seed.items())}"
                     + ("." if agree else " — the seeds disagree."))
        claims.append({"id": cid, "claim": text, "verdict": verdict, "holds": bool(point_ok),
                       "significant": bool(point_ok and significant), "estimates": est, "per_seed": per_seed,
                       "seeds_agree": agree,
                       "sentence": f"({cid}) {sentence_fn(est)}: {verdict}" + (f" ({pct})" if verdict == HOLDS else "")
                                   + "." + seeds})

    def stats(fns: dict) -> dict:
        out = {k: boot.interval(f) for k, f in fns.items()}
        out["_fns"] = fns
        return out

    # (a)
    add("a", "CFG γ* raises quality and lowers diversity vs base", ("base", g),
        lambda: stats({"dq": lambda x: x[g]["quality"] - x["base"]["quality"],
                       "dd": lambda x: x[g]["diversity"] - x["base"]["diversity"]}),
        lambda e: (e["dq"][0] > 0 and e["dd"][0] < 0, e["dq"][1] > 0 and e["dd"][2] < 0),
        lambda e: f"CFG {g_note} vs base: quality {_ci(e['dq'])}, diversity {_ci(e['dd'])}")

    # (b)
    one_pass = by.get("distilled", {}).get("forward_passes_per_token") == 1
    add("b", f"the β=0 student keeps ≥ {GAIN_KEPT:.0%} of CFG γ*'s quality gain at one pass per token",
        ("base", g, "distilled"),
        lambda: stats({"ratio": lambda x: _ratio(x["distilled"]["quality"] - x["base"]["quality"],
                                                 x[g]["quality"] - x["base"]["quality"]),
                       "gain_cfg": lambda x: x[g]["quality"] - x["base"]["quality"],
                       "gain_student": lambda x: x["distilled"]["quality"] - x["base"]["quality"]}),
        lambda e: (e["ratio"][0] >= GAIN_KEPT and e["gain_cfg"][0] > 0 and one_pass,
                   e["ratio"][1] >= GAIN_KEPT and e["gain_cfg"][1] > 0),
        lambda e: (f"β=0 student ({'1 pass' if one_pass else 'NOT 1 pass'}/token) keeps "
                   f"{_ci(e['ratio'], 2, signed=False)} of CFG's quality gain "
                   f"(student {_ci(e['gain_student'])}, CFG {g_note} {_ci(e['gain_cfg'])} vs base; "
                   f"the lower bound must be ≥ {GAIN_KEPT:g})"))

    # (c)
    add("c", "the diversity student is more diverse than base and β=0 without falling below the base's quality",
        ("base", "distilled", "diversity"),
        lambda: stats({"dd_base": lambda x: x["diversity"]["diversity"] - x["base"]["diversity"],
                       "dd_beta0": lambda x: x["diversity"]["diversity"] - x["distilled"]["diversity"],
                       "dq_base": lambda x: x["diversity"]["quality"] - x["base"]["quality"]}),
        lambda e: (e["dd_base"][0] > 0 and e["dd_beta0"][0] > 0 and e["dq_base"][0] >= 0,
                   e["dd_base"][1] > 0 and e["dd_beta0"][1] > 0 and e["dq_base"][1] >= 0),
        lambda e: (f"{by.get('diversity', {}).get('label', 'diversity student')}: diversity vs base "
                   f"{_ci(e['dd_base'])}, vs β=0 {_ci(e['dd_beta0'])}; quality vs base {_ci(e['dq_base'])}"))

    # (d)
    fams = {f: info["systems"] for f, info in results.get("families", {}).items()}
    ref = results.get("reference_point") or {}
    ok_d = "merge" in fams and "cfg" in fams and ref
    if ok_d:
        refp = (ref["quality"], ref["diversity"])
        hv = lambda x: hypervolume_difference(x, fams, refp)  # noqa: E731
        add("d", "the merge front is not below the CFG front", ("base",),
            lambda: {"hv_diff": boot.interval_loop(hv), "_fns": {"hv_diff": hv}},
            lambda e: (e["hv_diff"][0] >= 0, e["hv_diff"][1] > 0),
            lambda e: f"hypervolume of the merge front minus the CFG front {_ci(e['hv_diff'], 4)}")
    else:
        add("d", "the merge front is not below the CFG front", (None,), None, None, None)
    method = (f"two-way bootstrap over {boot.K} prompts and {boot.S} seeds" if boot.S > 1
              else f"bootstrap over {boot.K} prompts (one seed)") + f", {boot.n_boot} paired replicates"
    return {"level": confidence, "method": method, "gamma_star": g_note, "claims": claims}


def format_claims(claims: dict) -> str:
    """The claims block of the console summary."""
    lines = [f"claims on held-out prompts ({claims['level']:.0%} intervals, {claims['method']}):"]
    lines += [f"  {c['sentence']}" for c in claims["claims"]]
    return "\n".join(lines)
