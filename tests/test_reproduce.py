"""`divcfg reproduce NAME`: the tiny recipe runs from nothing (two student seeds through the demo),
writes its figures, and diffs them value by value against a published table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from divcfg.cli import main as cli_main
from divcfg.reproduce import RECIPES, diff_tables, format_diff, read_table


def _write_csv(path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_diff_says_which_new_values_lie_within_the_published_intervals(tmp_path):
    pub = [{"name": "base", "seed": "", "aggregate": "", "quality": "0.30", "quality_ci_low": "0.25",
            "quality_ci_high": "0.35", "diversity": "0.60", "diversity_ci_low": "0.55", "diversity_ci_high": "0.65",
            "valid_rate": "0.5"},
           {"name": "distilled", "seed": "", "aggregate": "True", "quality": "0.40", "quality_ci_low": "0.35",
            "quality_ci_high": "0.45", "diversity": "0.50", "diversity_ci_low": "0.45", "diversity_ci_high": "0.55",
            "valid_rate": "0.7"},
           {"name": "distilled_s1", "seed": "1", "aggregate": "", "quality": "9", "quality_ci_low": "9",
            "quality_ci_high": "9", "diversity": "9", "diversity_ci_low": "9", "diversity_ci_high": "9",
            "valid_rate": "1"},
           {"name": "gone", "seed": "", "aggregate": "", "quality": "0.1", "quality_ci_low": "0",
            "quality_ci_high": "0.2", "diversity": "0.1", "diversity_ci_low": "0", "diversity_ci_high": "0.2",
            "valid_rate": "1"}]
    new = [dict(pub[0], quality="0.34", diversity="0.70", valid_rate="0.6"),
           dict(pub[1], quality="0.20", diversity="0.50"), dict(pub[2])]
    _write_csv(tmp_path / "pub.csv", pub)
    _write_csv(tmp_path / "new.csv", new)
    old, now = read_table(tmp_path / "pub.csv"), read_table(tmp_path / "new.csv")
    assert set(old) == {"base", "distilled", "gone"}            # per-seed rows are not diffed
    rows = {(r["system"], r["metric"]): r for r in diff_tables(old, now)}
    assert rows[("base", "quality")]["within"] is True
    assert rows[("base", "diversity")]["within"] is False
    assert rows[("distilled", "quality")]["within"] is False
    assert rows[("distilled", "quality")]["delta"] == pytest.approx(-0.2)
    assert rows[("distilled", "diversity")]["within"] is True
    assert rows[("base", "valid_rate")]["within"] is None       # no interval published for it
    text = format_diff(list(rows.values()), ["gone"], [])
    assert "2 of 4 values with a published interval lie within it" in text and "not reproduced: gone" in text


def test_recipes_state_their_seeds():
    assert RECIPES["small"].seeds == (0, 1, 2) and "--seeds" in RECIPES["small"].steps[0]
    assert RECIPES["small"].steps[0][RECIPES["small"].steps[0].index("--seeds") + 1] == "0,1,2"
    assert RECIPES["small"].published == "docs/results/small/results.csv"
    fkl = RECIPES["small_fkl"].steps[0]   # the same run with the forward-KL diversity recipe
    assert fkl[fkl.index("--recipe") + 1] == "additive:5:g4:fkl" and fkl[fkl.index("--seeds") + 1] == "0,1,2"


def test_the_former_beta15_tables_reproduce_with_the_student_started_from_the_base():
    from divcfg.demo import PRESETS, student_dir
    from divcfg.recipe import parse_candidates
    assert PRESETS["demo"].recipe.from_beta0 and PRESETS["small"].recipe.from_beta0   # the presets': from β=0
    assert student_dir(Path("r"), 15.0, 0, PRESETS["demo"].recipe).name == "ft_beta15_fromb0"
    steps = RECIPES["small_beta15"].steps[0]
    recipe = parse_candidates(steps[steps.index("--recipe") + 1])[0]
    assert not recipe.from_beta0 and recipe.beta == 15.0                  # sessions 9–10's: from the base
    assert student_dir(Path("r"), 15.0, 1, recipe).name == "ft_beta15_s1"
    assert RECIPES["demo_beta15"].published == "docs/results/beta15/demo/results.csv"


@pytest.mark.slow
def test_tiny_recipe_from_nothing_then_diffed(tmp_path, capsys):
    root, data, out = tmp_path / "runs", tmp_path / "data", tmp_path / "new"
    published = tmp_path / "published" / "results.csv"
    argv = ["reproduce", "tiny", "--root", str(root), "--data-root", str(data), "--out-dir", str(out),
            "--published", str(published)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"$ divcfg demo --preset tiny --seeds 0,1 --root {root}" in printed
    assert "nothing published" in printed and "claims on held-out prompts" in printed
    for f in ("results.csv", "claims.json", "quality_diversity.png", "quality_diversity.svg", "diff.txt", "recipe.json"):
        assert (out / f).stat().st_size > 0, f
    record = json.loads((out / "recipe.json").read_text())
    assert record["seeds"] == [0, 1] and record["steps"][0]["command"].startswith("divcfg demo --preset tiny")
    # both seeds' students were trained (seed 0 in the single-seed folders) and evaluated
    for folder in ("ft_beta0", "ft_beta15", "ft_beta0_s1", "ft_beta15_s1"):
        assert json.loads((root / folder / "DONE.json").read_text())["finished"], folder
    assert json.loads((root / "ft_beta0_s1" / "checkpoint" / "config.json").read_text())["finetune"]["seed"] == 1
    results = json.loads((root / "eval" / "results.json").read_text())
    assert results["student_seeds"] == ["0", "1"]
    assert len(json.loads((out / "claims.json").read_text())["claims"]) == 4
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["seed"] for r in table} == {"", "0", "1"}

    # publish the table with the base's quality interval moved away: the rerun (stages cached) flags it
    rows = [dict(r) for r in table]
    base = next(r for r in rows if r["name"] == "base")
    q = float(base["quality"])
    base["quality_ci_low"], base["quality_ci_high"] = str(q + 0.5), str(q + 0.6)
    _write_csv(published, rows)
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "cached" in printed
    diff = (out / "diff.txt").read_text()
    lines = {tuple(line.split()[:2]): line for line in diff.splitlines()[2:] if line.split()[:1]}
    assert lines[("base", "quality")].rstrip().endswith("NO")
    checked = [r for r in read_table(published).values()
               if r["name"] != "base" and float(r["quality_ci_low"]) <= float(r["quality"]) <= float(r["quality_ci_high"])]
    assert checked and all(lines[(r["name"], "quality")].rstrip().endswith("yes") for r in checked)
    assert not math.isnan(float(base["quality"]))
