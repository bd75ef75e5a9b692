"""Symbolic vs audio E on one evaluation run (``divcfg.music.judges.compare``): an evaluation folder built
from real tunes of the tiny data set, judged by tiny real embedders, the audio rendered by the
synthesiser (without the soundfont these tests fail, they do not skip)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from divcfg.embedders.audio import AudioEmbedder
from divcfg.music.judges.audio_cli import preset_config
from divcfg.music.judges.compare import compare, main, run_compare
from divcfg.music import render

K, G = 6, 2
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def eval_run(tiny_data_dir, tmp_path_factory):
    """Three systems over K prompts × G generations of real tunes: "varied" (two different tunes per
    prompt), "copies" (one tune twice: zero diversity for any judge) and "mixed" (varied on the first
    half of the prompts, copies on the rest)."""
    from divcfg.embedders.audio import save_audio_embedder
    from divcfg.music.judges.diversity import DiversityEmbedder, EmbedderConfig, save_diversity_embedder
    from divcfg.music.dataset import load_split
    root = tmp_path_factory.mktemp("compare")
    tunes = [p["tokens"] for p in load_split(tiny_data_dir, "train")[:2 * K]]
    torch.manual_seed(0)
    sym = save_diversity_embedder(root / "sym_E", DiversityEmbedder(EmbedderConfig(vit="tiny", chunk_steps=32,
                                                                                    pitch_low=36, n_pitches=60)),
                                  tokenizer_path=tiny_data_dir / "tokenizer.json")
    aud = save_audio_embedder(root / "audio_E", AudioEmbedder(preset_config("tiny")))
    gens = {"varied": lambda p: [tunes[2 * p], tunes[2 * p + 1]],
            "copies": lambda p: [tunes[2 * p], tunes[2 * p]],
            "mixed": lambda p: [tunes[2 * p], tunes[2 * p + 1] if p < K // 2 else tunes[2 * p]]}
    rows = [{"system": s, "prompt_index": p, "prompt_id": f"p{p}", "generation": g, "tokens": toks}
            for s, f in gens.items() for p in range(K) for g, toks in enumerate(f(p))]
    run = root / "eval"
    run.mkdir()
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"domain": "music", "generations": G, "config": {"embedder": str(sym), "data_dir": str(tiny_data_dir)},
               "prompts": [{"index": p, "text": f"prompt {p}"} for p in range(K)],
               "systems": [{"name": s, "label": s.upper(), "family": "x"} for s in gens]}
    (run / "results.json").write_text(json.dumps(results))
    return {"run": run, "audio": aud}


def test_every_judge_ranks_varied_over_mixed_over_copies(eval_run, tmp_path):
    assert render.find_soundfont() is not None, "no General MIDI soundfont: run `make` (installs timgm6mb-soundfont)"
    res = run_compare(eval_run["run"], str(eval_run["audio"]), out=str(tmp_path / "out"), n_boot=50, progress=False)
    assert res["n_prompts"] == K and res["generations"] == G
    for j in ("symbolic", "audio", "logmel_stats"):
        d = res["judges"][j]
        assert d["copies"]["diversity"] == 0.0 and d["copies"]["ci_high"] == 0.0    # identical pairs: exactly 0
        assert d["varied"]["diversity"] > d["mixed"]["diversity"] > 0.0
        assert d["varied"]["ci_low"] <= d["varied"]["diversity"] <= d["varied"]["ci_high"]
        assert [d[s]["rank"] for s in ("varied", "mixed", "copies")] == [1, 2, 3]
        assert d["varied"]["minus_ref"] == 0.0 and d["copies"]["minus_ref_ci"][1] < 0   # "varied" is the reference
        # "mixed" is "varied" on the first half of the prompts and 0 on the rest
        pp = res["per_prompt"][j]
        assert np.allclose(pp["mixed"][:K // 2], pp["varied"][:K // 2]) and not any(pp["mixed"][K // 2:])
    a = res["agreement"]["symbolic~audio"]
    assert a["kendall_tau"] == pytest.approx(1.0) and a["spearman_rho"] == pytest.approx(1.0)
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| VARIED |" in md and "Kendall" in md
    stored = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert stored["judges"]["audio"]["varied"]["rank"] == 1 and stored["provenance"]["seed"] == 0


def test_reversed_rankings_give_tau_minus_one():
    up = {s: np.full(5, v) + np.linspace(0, 0.01, 5) for s, v in (("a", 0.1), ("b", 0.2), ("c", 0.3))}
    down = {s: np.full(5, 0.4 - v) for s, v in (("a", 0.1), ("b", 0.2), ("c", 0.3))}
    res = compare({"x": up, "y": down}, n_boot=20)
    assert res["agreement"]["x~y"]["kendall_tau"] == pytest.approx(-1.0)
    assert res["judges"]["x"]["c"]["rank"] == 1 and res["judges"]["y"]["c"]["rank"] == 3


@pytest.mark.parametrize("argv, words", [
    (["/nonexistent/run", "--audio-embedder", "x"], "no results.json"),
    (["{run}", "--audio-embedder", "/nonexistent/E"], "not found"),
    (["{run}", "--audio-embedder", "{audio}", "--systems", "nope"], "unknown system"),
    (["{run}"], "--audio-embedder"),
])
def test_cli_errors_are_one_line(eval_run, argv, words, capsys):
    argv = [a.replace("{run}", str(eval_run["run"])).replace("{audio}", str(eval_run["audio"])) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err
