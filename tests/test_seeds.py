"""Seeds as an axis of `divcfg evaluate`: students per seed paired by position, per-seed and aggregate
rows, the two-way bootstrap over prompts and seeds (paired across systems), seed agreement."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from divcfg.cli import main as cli_main
from divcfg.errors import UserError
from divcfg.evaluation.seeds import TwoWayBootstrap, seed_pairs
from divcfg.models.generator import load_generator, save_generator

from test_evaluation import PRESETS, _perturbed, data_dir, shared_tiny_setup  # noqa: F401  (fixture)

AGGREGATES = ["distilled", "diversity", "merge_l0", "merge_l0.5", "merge_l1"]


def make_students(setup: dict, root: Path, seed: int, gamma: float = 2.0) -> dict[str, str]:
    """A β=0 and a β=15 'student' of training seed ``seed``: perturbed copies of the tiny base with the
    records a fine-tuning run writes (finetune.seed, .gamma, .beta)."""
    base, _ = load_generator(setup["base"], "cpu")
    tok_file = Path(setup["tokenizer"])
    out = {}
    for role, beta, scale in (("quality", 0.0, 0.01 + 0.02 * seed), ("diversity", 15.0, 0.03 + 0.02 * seed)):
        path = root / f"ft_beta{beta:g}_s{seed}" / "checkpoint"
        save_generator(path, _perturbed(base, scale, 100 * seed + int(beta) + 1),
                       {"finetune": {"beta": beta, "seed": seed, "gamma": gamma}},
                       tok_file)
        out[role] = str(path)
    return out


@pytest.fixture(scope="module")
def seeded_run(data_dir, tmp_path_factory):  # noqa: F811
    setup = {**shared_tiny_setup(data_dir, tmp_path_factory), "tokenizer": str(data_dir / "tokenizer.json")}
    root = tmp_path_factory.mktemp("seed_students")
    students = [make_students(setup, root, s) for s in (3, 7)]
    # seed 7's diversity student was stopped by its time cap (the marker a capped fine-tuning run writes)
    from divcfg.stages import mark_finished
    mark_finished(Path(students[1]["diversity"]).parent, "finetune", 5, 10,
                  cut_short={"steps_done": 5, "steps_planned": 10, "cap_minutes": 0.1})
    out = tmp_path_factory.mktemp("seeded_eval")
    argv = ["evaluate", "--preset", "tiny", "--base", setup["base"], "--embedder", setup["embedder"],
            "--scorer", setup["scorer"], "--data-dir", str(data_dir), "--out", str(out), "--threads", "1",
            "--quality", ",".join(s["quality"] for s in students),
            "--diversity", ",".join(s["diversity"] for s in students)]
    import contextlib
    import io
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert cli_main(argv) == 0
    err = stderr.getvalue()   # one loud line for the model its time cap stopped, none for the others
    assert "WARNING" in err and students[1]["diversity"] in err and students[0]["diversity"] not in err
    return json.loads((out / "results.json").read_text()), out, students


def test_per_seed_and_aggregate_rows(seeded_run, capsys):
    results, out, students = seeded_run
    assert results["student_seeds"] == ["3", "7"]  # the students' recorded training seeds
    names = [r["name"] for r in results["systems"]]
    assert names[:3] == ["base", "cfg_g2", "temp_t1.3"]
    assert names[3:8] == AGGREGATES
    assert names[8:] == [f"{n}_s{s}" for n in AGGREGATES for s in ("3", "7")]
    by = {r["name"]: r for r in results["systems"]}
    for name in AGGREGATES:
        agg = by[name]
        per = [by[f"{name}_s{s}"] for s in ("3", "7")]
        assert agg["aggregate"] is True and agg["seeds"] == ["3", "7"]
        assert agg["quality"] == pytest.approx(np.mean([p["quality"] for p in per]), abs=1e-9)
        assert agg["diversity"] == pytest.approx(np.mean([p["diversity"] for p in per]), abs=1e-9)
        assert agg["quality_ci_low"] <= agg["quality"] + 1e-9 <= agg["quality_ci_high"] + 2e-9
        assert agg["seeds_agree"] in (True, False)
        assert all(p["aggregate_of"] == name for p in per)
    # each seed's rows are its own run's rows; the seeds' students really differ
    for s, st in zip(("3", "7"), students):
        sub = json.loads((out / f"seed_{s}" / "results.json").read_text())
        sub_by = {r["name"]: r for r in sub["systems"]}
        assert by[f"distilled_s{s}"]["quality"] == sub_by["distilled"]["quality"]
        assert str(Path(st["quality"]).resolve()) == sub_by["distilled"]["checkpoint"]
        assert sub_by["base"]["per_prompt"] == by["base"]["per_prompt"]  # common random numbers across seeds
        # the base is sampled in the first pass only; later passes reuse its row and samples
        assert sub_by["base"].get("reused_from_earlier_pass", False) == (s != "3")
    assert by["distilled_s3"]["per_prompt"] != by["distilled_s7"]["per_prompt"]
    # a merge is formed within each seed's pair
    sub7 = json.loads((out / "seed_7" / "results.json").read_text())
    m = next(r for r in sub7["systems"] if r["name"] == "merge_l0.5")
    assert m["checkpoint"] == str(Path(students[1]["quality"]).resolve())
    assert m["checkpoint_b"] == str(Path(students[1]["diversity"]).resolve())
    mv = results["merge_vs_cfg"]
    assert "seeds" in mv["ci_method"] and set(mv["per_seed_hypervolume_difference"]) == {"3", "7"}
    lo, hi = mv["hypervolume_difference_ci"]
    assert lo <= mv["hypervolume_difference"] + 1e-9 <= hi + 2e-9
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names
    assert {r["seed"] for r in rows} == {"", "3", "7"} and rows[3]["aggregate"] == "True"
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["system"] for s in samples} == {"base", "cfg_g2", "temp_t1.3"} | set(names[8:])
    claims = results["claims"]["claims"]
    assert [c["id"] for c in claims] == ["a", "b", "c", "d"]
    assert all(set(c["per_seed"]) == {"3", "7"} for c in claims)
    assert "seeds" in results["claims"]["method"]


def _synthetic(q: dict[str, list[list[float]]]) -> dict:
    """Results with the given per-seed per-prompt qualities (diversity = 0)."""
    systems, labels = [], None
    for name, rows in q.items():
        if len(rows) == 1:
            systems.append({"name": name, "family": "cfg", "per_prompt": {"quality": rows[0],
                                                                          "diversity": [0.0] * len(rows[0])}})
            continue
        labels = [str(i) for i in range(len(rows))]
        systems.append({"name": name, "family": "finetuned", "aggregate": True, "per_prompt": {}})
        systems += [{"name": f"{name}_s{i}", "family": "finetuned", "seed": str(i), "aggregate_of": name,
                     "per_prompt": {"quality": r, "diversity": [0.0] * len(r)}} for i, r in enumerate(rows)]
    return {"systems": systems, "student_seeds": labels}


def test_two_way_bootstrap_resamples_seeds_and_pairs_systems():
    K = 40
    rng = np.random.default_rng(0)
    prompt_effect = rng.normal(0, 1, K)
    res = _synthetic({
        "fixed": [list(prompt_effect)],
        # seed effect ±1 on top of the same prompts: the interval must cover the seed spread
        "student": [list(prompt_effect - 1), list(prompt_effect + 1)],
        "shifted": [list(prompt_effect + 0.3), list(prompt_effect + 0.3)],
    })
    boot = TwoWayBootstrap(res, 2000, 0.95, seed=1)
    assert boot.S == 2 and boot.K == K
    p, lo, hi = boot.interval(lambda x: x["student"]["quality"])
    _, flo, fhi = boot.interval(lambda x: x["fixed"]["quality"])
    assert p == pytest.approx(prompt_effect.mean())
    assert hi - lo > 1.5 * (fhi - flo)          # the seed axis widens the interval
    # paired: the same prompt draw for every system, so a constant shift has a zero-width interval
    d, dlo, dhi = boot.interval(lambda x: x["shifted"]["quality"] - x["fixed"]["quality"])
    assert d == pytest.approx(0.3) and dlo == pytest.approx(0.3) and dhi == pytest.approx(0.3)
    # seed-paired too: student − fixed depends only on the seeds drawn: −1, 0 or +1
    _, slo, shi = boot.interval(lambda x: x["student"]["quality"] - x["fixed"]["quality"])
    assert slo == pytest.approx(-1.0) and shi == pytest.approx(1.0)
    assert boot.seed_point("student", 1)["quality"] == pytest.approx(prompt_effect.mean() + 1)


def test_seed_lists_must_pair_up():
    from divcfg.evaluation import EvalConfig
    cfg = EvalConfig(quality="a,b,c", diversity="x,y")
    with pytest.raises(UserError, match="one per seed"):
        seed_pairs(cfg)
    pairs = seed_pairs(EvalConfig(quality="a,b", diversity="x,y", merge_a="m"))
    assert pairs == [{"quality": "a", "diversity": "x", "merge_a": "m", "merge_b": ""},
                     {"quality": "b", "diversity": "y", "merge_a": "m", "merge_b": ""}]


def test_single_seed_run_has_claims_and_training_status(data_dir, tmp_path_factory, tmp_path):  # noqa: F811
    setup = shared_tiny_setup(data_dir, tmp_path_factory)
    from divcfg.evaluation import EvalConfig
    from divcfg.evaluation.seeds import evaluate_seeds
    torch.set_num_threads(1)
    cfg = EvalConfig(**{**PRESETS["tiny"], "base": setup["base"], "quality": setup["quality"],
                        "diversity": setup["diversity"], "embedder": setup["embedder"], "scorer": setup["scorer"],
                        "data_dir": str(data_dir), "out": str(tmp_path), "threads": 1, "lams": "0,1"})
    res = evaluate_seeds(cfg)
    assert "student_seeds" not in res and not any(r.get("aggregate") for r in res["systems"])
    assert res["claims"]["method"].startswith("bootstrap over 3 prompts (one seed)")
    assert set(res["training_status"]) >= {setup["base"], setup["quality"]}
    assert all(v["cut_short"] is None for v in res["training_status"].values())
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["claims"] == json.loads(json.dumps(res["claims"]))


def test_report_shows_seed_spread_claims_and_cut_short(seeded_run):
    from divcfg.report import render_report
    results, out, students = seeded_run
    cut = results["training_status"][students[1]["diversity"]]["cut_short"]
    assert cut == {"steps_done": 5, "steps_planned": 10, "cap_minutes": 0.1}
    assert results["training_status"][students[0]["diversity"]]["cut_short"] is None
    page = render_report(out, n_prompts=1, n_generations=1, audio=False).read_text()
    assert page.count('class="cut-short"') == 1 and f"{students[1]['diversity']} was CUT SHORT" in page
    for c in results["claims"]["claims"]:
        assert c["sentence"] in html.unescape(page)
    assert "seeds agree?" in page and page.count('class="seeds-agree"') == len(results["systems"])
    assert page.count('class="per-seed muted"') == 10 and "(mean of 2 seeds)" in page
    assert "key exact" in page and "meter" in page   # attribute accuracy columns
    # listening rows: one seed's students by default
    assert "distilled β=0 (seed 3)" in page.split('id="listen"')[1]
    assert "distilled β=0 (seed 7)" not in page.split('id="listen"')[1]


def test_judges_train_one_model_per_seed_in_one_invocation(tiny_data_dir, tmp_path):
    """`--seeds 0,1` trains E and the scorer once per seed: seed 0 in --out, seed 1 in <out>_s1, each
    finished (DONE.json) with its own seed recorded, and the two seeds' weights differ."""
    from safetensors.torch import load_file
    from divcfg.stages import read_marker
    for cmd in ("embedder", "scorer"):
        out = tmp_path / cmd
        assert cli_main([cmd, "train", "--preset", "tiny", "--data-dir", str(tiny_data_dir), "--out", str(out),
                         "--steps", "3", "--eval-pieces", "6", "--seeds", "0,1"]) == 0
        dirs = [out, tmp_path / f"{cmd}_s1"]
        markers = [read_marker(d) for d in dirs]
        assert all(m and m["finished"] for m in markers), markers
        assert [m["provenance"]["seed"] for m in markers] == [0, 1]
        w0, w1 = (load_file(str(next(d.glob("*.safetensors")))) for d in dirs)
        assert w0.keys() == w1.keys()
        assert any(not torch.equal(w0[k], w1[k]) for k in w0), f"{cmd}: seeds 0 and 1 trained identical weights"
    with pytest.raises(SystemExit) as e:
        cli_main(["scorer", "train", "--preset", "tiny", "--data-dir", str(tiny_data_dir),
                  "--out", str(tmp_path / "x"), "--seeds", "1,1"])
    assert e.value.code == 2
