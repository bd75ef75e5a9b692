"""The results table: one row per evaluated system with its cost (forward passes per token, tokens/s),
quality and diversity with their intervals, the domain's figure columns (after diversity), the rates
(empty, valid, EOS) and mean length, the domain's extra columns (after length), the fronts the system
is on, and with several student seeds whether the seeds agree. Values are plain text: the template
escapes them."""

from __future__ import annotations

from divcfg.report.html import fmt
from divcfg.report.section import Column


def _interval(r: dict, key: str) -> str:
    return f"{fmt(r[key])} [{fmt(r[key + '_ci_low'], 2)}, {fmt(r[key + '_ci_high'], 2)}]"


def table_rows(results: dict, figure_columns: list[Column], extra_columns: list[Column]) -> list[dict]:
    rows = []
    for r in results["systems"]:
        rows.append({
            "label": r["label"], "passes": r["forward_passes_per_token"], "tps": f"{r['tokens_per_s']:,.0f}",
            "quality": _interval(r, "quality"), "diversity": _interval(r, "diversity"),
            "figures": [fmt(r.get(c.key), c.digits) for c in figure_columns],
            "empty": f"{r['empty_rate']:.0%}", "valid": f"{r['valid_rate']:.0%}", "eos": f"{r['eos_rate']:.0%}",
            "length": f"{r['mean_length']:.0f}",
            "extras": [fmt(r.get(c.key), c.digits) for c in extra_columns],
            "front": ", ".join(r.get("on_front", [])) or "", "same_as": r.get("same_as") or "",
            "seed": r.get("seed"), "aggregate": bool(r.get("aggregate")),
            "seeds_agree": "" if r.get("seeds_agree") is None else ("yes" if r["seeds_agree"] else "NO: flips")})
    return rows
