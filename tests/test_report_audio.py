"""`divcfg report` for the audio domain, on the real pipeline: test_musicgen's tiny MusicGen (built in
code) evaluated through `divcfg evaluate --prompts FILE` (the default audio judges, no checkpoints: the log-mel
stand-in for diversity, no quality judge), then `divcfg report`. The page has the plot and one WAV player per
shown generation, each clip the codec's decoding of that generation's recorded tokens; without the
base checkpoint the page says why there is nothing to play."""

from __future__ import annotations

import json
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from divcfg.cli import main as cli

from test_musicgen import WORDS, save_tiny_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory) -> tuple[dict, Path, Path]:
    """(results.json, the evaluation folder, the MusicGen folder) of an audio-domain run through the CLI."""
    root = tmp_path_factory.mktemp("audio_report")
    save_tiny_checkpoint(root / "mg")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(f"a {a} song with {b}" for a in WORDS[:6] for b in WORDS[6:]) + "\n")
    out = root / "eval"
    assert cli(["evaluate", "--base", f"hf:{root / 'mg'}", "--prompts", str(prompts), "--split", "train",
                "--num-prompts", "2", "--generations", "2", "--batch-size", "4", "--cfg-gammas", "3",
                "--temperatures", "1.5", "--lams", "", "--bootstrap", "20", "--embedder", "", "--scorer", "",
                "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text()), out, root / "mg"


def _read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path)) as w:
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")


def test_audio_report_plays_the_decoded_generations(audio_run, tmp_path):
    from divcfg.models.base import load_generator_any

    results, shared, mg = audio_run
    out = tmp_path / "eval"
    shutil.copytree(shared, out)
    assert results["domain"] == "audio"
    assert cli(["report", str(out), "--prompts", "2", "--generations", "2"]) == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="qd-plot" src="data:image/png;base64,' in text
    assert (out / "report_assets" / "quality_diversity.png").stat().st_size > 5000
    for r in results["systems"]:
        assert f'<td class="name">{r["label"]}' in text
    listen = text.split('<h2 id="listen">', 1)[1].split('<h2 id="provenance">', 1)[0]
    players = re.findall(r'<audio controls preload="none" src="(report_assets/gen_[0-9a-f]{16}\.wav)">', listen)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    by_system = {r["name"]: r for r in results["systems"]}
    shown = [s for p in range(2) for r in results["systems"] for s in samples   # the page's order
             if s["system"] == r["name"] and s["prompt_index"] == p and s["generation"] < 2]
    assert len(players) == len(shown) == 2 * 2 * len(by_system)
    # each player plays the codec's decoding of its own generation's tokens
    plugin = load_generator_any(f"hf:{mg}")
    for link, s in zip(players, shown):
        rate, pcm = _read_wav(out / link)
        expected = (np.clip(plugin.decode([s["tokens"]])[0], -1, 1) * 32767).astype("<i2")
        assert rate == plugin.sampling_rate and np.array_equal(pcm, expected.reshape(-1))
    assert len(set(players)) > len(players) // 2     # generations differ (identical clips would share a file)
    # without audio: no players; with the base checkpoint gone: the page says why
    assert cli(["report", str(out), "--no-audio"]) == 0
    quiet = (out / "report.html").read_text(encoding="utf-8")
    assert "<audio " not in quiet and "turned off" in quiet and not list((out / "report_assets").glob("gen_*"))
    moved = mg.rename(mg.with_name("mg_moved"))
    try:
        assert cli(["report", str(out)]) == 0
    finally:
        moved.rename(mg)
    gone = (out / "report.html").read_text(encoding="utf-8")
    assert "<audio " not in gone and "does not load" in gone and "no clip" in gone
