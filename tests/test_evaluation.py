"""`divcfg evaluate` on the real tiny data set with tiny generators and tiny judges built here:
every system lands in the table, figures are consistent with the samples, runs are reproducible."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from divcfg.cli import main as cli_main
from divcfg.errors import UserError
from divcfg.evaluation import PRESETS, EvalConfig, bootstrap_ci, evaluate
from divcfg.models.generator import load_generator, save_generator
from divcfg.models.transformer import ModelConfig, MusicTransformer

EXPECTED = ["base", "cfg_g2", "temp_t1.3", "distilled", "diversity", "merge_l0", "merge_l0.5", "merge_l1"]


@pytest.fixture(scope="session")
def data_dir(request, tmp_path_factory):
    """The shared tiny data set (conftest's ``tiny_data_dir``), built here if that fixture is absent."""
    try:
        return Path(request.getfixturevalue("tiny_data_dir"))
    except pytest.FixtureLookupError:
        from divcfg.music.corpus import build
        return build("tiny", data_dir=tmp_path_factory.mktemp("data"), workers=2, quiet=True)


def make_tiny_scorer(path: Path, data_dir: Path) -> Path:
    """A tiny alignment scorer checkpoint, built with the judges' own API (untrained weights)."""
    from divcfg.music.judges.alignment import AlignmentScorer, save_alignment_scorer
    from divcfg.music.judges.alignment_cli import make_config
    from divcfg.music.tokenizer import load_tokenizer

    tok = load_tokenizer(data_dir)
    torch.manual_seed(0)
    scorer = AlignmentScorer(make_config(tok, "tiny", max_len=256), tok)
    return save_alignment_scorer(path, scorer, tokenizer_path=data_dir / "tokenizer.json")


def _perturbed(base: MusicTransformer, scale: float, seed: int) -> MusicTransformer:
    torch.manual_seed(seed)
    model = MusicTransformer(base.cfg)
    model.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


_SHARED: dict = {}  # built once per session, also used by test_report.py


def shared_tiny_setup(data_dir: Path, tmp_path_factory) -> dict:
    if "setup" not in _SHARED:
        _SHARED["setup"] = _build_tiny_setup(data_dir, tmp_path_factory)
    return _SHARED["setup"]


def shared_tiny_run(data_dir: Path, tmp_path_factory) -> tuple[dict, Path]:
    """The tiny evaluation run (results, run folder)."""
    if "run" not in _SHARED:
        out = tmp_path_factory.mktemp("eval_run")
        _SHARED["run"] = evaluate(tiny_config(shared_tiny_setup(data_dir, tmp_path_factory), data_dir, out)), out
    return _SHARED["run"]


def _build_tiny_setup(data_dir: Path, tmp_path_factory) -> dict:
    """Paths of a tiny base generator, two 'students' (perturbed copies with finetune records and
    metrics logs), a tiny diversity embedder and a tiny alignment scorer."""
    from divcfg.music.judges.diversity import DiversityEmbedder, EmbedderConfig, save_diversity_embedder
    from divcfg.music.tokenizer import load_tokenizer, special_ids

    root = tmp_path_factory.mktemp("eval_setup")
    tok_file = data_dir / "tokenizer.json"
    tok = load_tokenizer(data_dir)
    ids = special_ids(tok)
    torch.manual_seed(0)
    base = MusicTransformer(ModelConfig(vocab_size=len(tok), n_layer=1, n_head=2, d_model=32, n_prefix=2,
                                        max_len=64, dropout=0.0, pad_id=ids["pad"], bos_id=ids["bos"],
                                        eos_id=ids["eos"]))
    with torch.no_grad():
        for p in base.cond_proj.parameters():
            p.mul_(20)            # the condition matters, so CFG changes the samples
        base.ln_f.weight.mul_(10)  # a peaked output distribution, as after training
    paths = {"base": root / "base" / "checkpoint"}
    save_generator(paths["base"], base, {"note": "tiny random test base"}, tok_file)
    for name, beta, scale in (("quality", 0.0, 0.01), ("diversity", 15.0, 0.03)):
        paths[name] = root / f"ft{beta:g}" / "checkpoint"
        save_generator(paths[name], _perturbed(base, scale, int(beta) + 1), {"finetune": {"beta": beta}}, tok_file)
        with open(paths[name].parent / "metrics.jsonl", "w") as f:
            for step in range(0, 30, 5):
                f.write(json.dumps({"step": step, "kl/teacher": 1 / (1 + step),
                                    "reward/diversity/mean": 0.1 + beta * step * 1e-3}) + "\n")
    torch.manual_seed(0)
    E = DiversityEmbedder(EmbedderConfig(vit="tiny", out_dim=16, max_chunks=2), tok)
    paths["embedder"] = save_diversity_embedder(root / "embedder", E, tokenizer_path=tok_file)
    paths["scorer"] = make_tiny_scorer(root / "scorer", data_dir)
    return {k: str(v) for k, v in paths.items()}


def tiny_config(setup: dict, data_dir: Path, out: Path, **kw) -> EvalConfig:
    values = {**PRESETS["tiny"], "base": setup["base"], "quality": setup["quality"],
              "diversity": setup["diversity"], "embedder": setup["embedder"], "scorer": setup["scorer"],
              "data_dir": str(data_dir), "out": str(out), "threads": 1, **kw}
    return EvalConfig(**values)


@pytest.fixture(scope="session")
def tiny_setup(data_dir, tmp_path_factory):
    return shared_tiny_setup(data_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
    return shared_tiny_run(data_dir, tmp_path_factory)


def _samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_every_system_is_in_the_table(tiny_run):
    results, out = tiny_run
    K, G = results["num_prompts"], results["generations"]
    assert (K, G) == (PRESETS["tiny"]["num_prompts"], PRESETS["tiny"]["generations"])
    assert [r["name"] for r in results["systems"]] == EXPECTED
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["name"] for row in table] == EXPECTED
    for row, r in zip(table, results["systems"]):
        assert float(row["quality"]) == pytest.approx(r["quality"], rel=1e-5)
        assert r["quality_ci_low"] <= r["quality"] + 1e-9 and r["quality"] <= r["quality_ci_high"] + 1e-9
        assert r["diversity_ci_low"] <= r["diversity"] + 1e-9 and r["diversity"] <= r["diversity_ci_high"] + 1e-9
        assert -1.0 <= r["quality"] <= 1.0 and 0.0 <= r["diversity"] <= 2.0
        for k in ("empty_rate", "valid_rate", "eos_rate"):
            assert 0.0 <= r[k] <= 1.0
        assert r["tokens_per_s"] > 0 and r["mean_length"] > 0
        assert r["forward_passes_per_token"] == (2 if r["family"] == "cfg" else 1)
        assert set(r["music"]) >= {"pitch_class_entropy", "scale_consistency", "polyphony"}
        assert len(r["per_prompt"]["quality"]) == K
    by = {r["name"]: r for r in results["systems"]}
    # identical weights are sampled once: merge endpoints are the students
    assert by["merge_l0"]["same_as"] == "distilled" and by["merge_l1"]["same_as"] == "diversity"
    assert by["merge_l0"]["quality"] == by["distilled"]["quality"]
    assert by["merge_l0.5"]["same_as"] is None
    assert by["distilled"]["label"] == "distilled β=0" and by["diversity"]["label"] == "diversity β=15"
    samples = _samples(out)
    for name in EXPECTED:
        mine = [s for s in samples if s["system"] == name]
        assert sorted((s["prompt_index"], s["generation"]) for s in mine) == [(k, g) for k in range(K) for g in range(G)]
    base = {(s["prompt_index"], s["generation"]): s["tokens"] for s in samples if s["system"] == "base"}
    cfg = {(s["prompt_index"], s["generation"]): s["tokens"] for s in samples if s["system"] == "cfg_g2"}
    assert base != cfg  # guidance changed what was sampled
    assert set(results["training_logs"]) == {"distilled", "diversity"}
    assert results["provenance"]["git_commit"] and results["seeds"]["sampling"] == 0


def test_figures_agree_with_the_samples(tiny_run, tiny_setup):
    """Quality and diversity recomputed from samples.jsonl with the judges match the table."""
    from divcfg.music.judges.diversity import group_diversity, load_diversity_embedder

    results, out = tiny_run
    G = results["generations"]
    E = load_diversity_embedder(tiny_setup["embedder"])
    samples = _samples(out)
    for r in results["systems"]:
        mine = sorted((s for s in samples if s["system"] == r["name"]),
                      key=lambda s: (s["prompt_index"], s["generation"]))
        assert r["quality"] == pytest.approx(sum(s["quality"] for s in mine) / len(mine), abs=1e-6)
        groups = [[s["tokens"] for s in mine[k * G:(k + 1) * G]] for k in range(len(mine) // G)]
        per_prompt, _ = group_diversity(E, groups)
        assert r["diversity"] == pytest.approx(float(per_prompt.mean()), abs=1e-6)
        assert r["empty_rate"] == pytest.approx(sum(s["n_notes"] == 0 for s in mine) / len(mine))
        assert r["eos_rate"] == pytest.approx(sum(s["finished"] for s in mine) / len(mine))


def test_fronts_and_hypervolumes(tiny_run):
    results, _ = tiny_run
    fams = results["families"]
    assert fams["cfg"]["systems"] == ["base", "cfg_g2"] and fams["temperature"]["systems"] == ["base", "temp_t1.3"]
    assert fams["merge"]["systems"] == ["merge_l0", "merge_l0.5", "merge_l1"]
    ref = results["reference_point"]
    pts = {r["name"]: (r["quality"], r["diversity"]) for r in results["systems"]}
    assert all(q > ref["quality"] and d > ref["diversity"] for q, d in pts.values())
    for fam, info in fams.items():
        assert info["front"] and set(info["front"]) <= set(info["systems"]) and info["hypervolume"] > 0
        for name in info["systems"]:  # a system off the front is dominated by a front member
            if name not in info["front"]:
                q, d = pts[name]
                assert any(pts[f][0] >= q and pts[f][1] >= d for f in info["front"])
    mv = results["merge_vs_cfg"]
    assert mv["hypervolume_merge"] == pytest.approx(fams["merge"]["hypervolume"])
    assert mv["hypervolume_cfg"] == pytest.approx(fams["cfg"]["hypervolume"])
    lo, hi = mv["hypervolume_difference_ci"]
    assert lo <= hi and 0.0 <= mv["p_merge_hypervolume_greater"] <= 1.0
    assert isinstance(mv["merge_dominates_cfg"], bool)


def test_same_seed_same_samples(tiny_setup, data_dir, tmp_path):
    kw = dict(cfg_gammas="", temperatures="", quality="", diversity="", lams="", bootstrap=10)
    a = evaluate(tiny_config(tiny_setup, data_dir, tmp_path / "a", **kw))
    b = evaluate(tiny_config(tiny_setup, data_dir, tmp_path / "b", **kw))
    c = evaluate(tiny_config(tiny_setup, data_dir, tmp_path / "c", seed=1, **kw))
    assert [r["name"] for r in a["systems"]] == ["base"]
    ta, tb, tc = (_samples(tmp_path / x) for x in "abc")
    assert [s["tokens"] for s in ta] == [s["tokens"] for s in tb]
    assert a["prompts"] == b["prompts"] and a["systems"][0]["quality"] == b["systems"][0]["quality"]
    assert [s["tokens"] for s in ta] != [s["tokens"] for s in tc]


def test_user_errors(tiny_setup, data_dir, tmp_path):
    with pytest.raises(UserError, match="at least 2"):
        evaluate(tiny_config(tiny_setup, data_dir, tmp_path, generations=1))
    with pytest.raises(UserError, match="comma-separated"):
        evaluate(tiny_config(tiny_setup, data_dir, tmp_path, cfg_gammas="2,three"))
    with pytest.raises(UserError, match="both endpoints"):
        evaluate(tiny_config(tiny_setup, data_dir, tmp_path, diversity="", merge_a=tiny_setup["quality"]))
    with pytest.raises(UserError, match="not found"):
        evaluate(tiny_config(tiny_setup, data_dir, tmp_path, base=str(tmp_path / "missing")))
    with pytest.raises(SystemExit) as e:   # the flag's range is checked by argparse: exit status 2
        cli_main(["evaluate", "--preset", "tiny", "--base", tiny_setup["base"], "--embedder",
                  tiny_setup["embedder"], "--scorer", tiny_setup["scorer"], "--data-dir", str(data_dir),
                  "--temperatures", "0,1.2", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_bootstrap_interval_covers_the_mean():
    values = [0.1, 0.4, 0.35, 0.8, 0.5, 0.2]
    lo, hi = bootstrap_ci(values, 2000, 0.95, 0)
    assert lo < sum(values) / len(values) < hi and hi - lo < 0.6
    assert bootstrap_ci([0.3, math.nan], 100, 0.95, 0) == (0.3, 0.3)


def test_cfg_at_a_temperature(tiny_setup, data_dir, tmp_path):
    """--cfg-temperatures samples CFG γ at τ as its own family, off the CFG front, at two passes per token."""
    from divcfg.report.plots import plot_quality_diversity

    kw = dict(cfg_gammas="2", temperatures="", cfg_temperatures="1,1.5", quality="", diversity="", lams="",
              bootstrap=10)
    results = evaluate(tiny_config(tiny_setup, data_dir, tmp_path, **kw))
    by = {r["name"]: r for r in results["systems"]}
    assert list(by) == ["base", "cfg_g2", "cfg_g2_t1.5"]   # τ=1 is CFG γ=2 itself
    hot = by["cfg_g2_t1.5"]
    assert (hot["family"], hot["gamma"], hot["temperature"], hot["forward_passes_per_token"]) == \
        ("cfg_temperature", 2.0, 1.5, 2)
    assert hot["label"] == "CFG γ=2 τ=1.5"
    assert results["families"]["cfg"]["systems"] == ["base", "cfg_g2"]
    assert results["families"]["cfg_temperature"]["systems"] == ["cfg_g2_t1.5"]
    samples = _samples(tmp_path)
    tokens = {name: [s["tokens"] for s in samples if s["system"] == name] for name in by}
    assert tokens["cfg_g2_t1.5"] != tokens["cfg_g2"]   # the temperature changed what was sampled
    plot_quality_diversity(results, tmp_path / "plane.png", tmp_path / "plane.svg")
    assert "CFG at τ≠1" in (tmp_path / "plane.svg").read_text()
    with pytest.raises(UserError, match="cfg-temperatures"):
        evaluate(tiny_config(tiny_setup, data_dir, tmp_path / "bad", cfg_temperatures="0,1.2"))
