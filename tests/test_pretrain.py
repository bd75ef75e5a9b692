"""Pre-training on the real tiny data set, resume, sampling CLI and its user errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from divcfg.models.generator import load_generator
from divcfg.pretrain import PRESETS, PretrainConfig, train


def _cfg(data_dir, out, **kw):
    # step-bounded (no wall-time box), so the outcome does not depend on how busy the machine is
    values = {**PRESETS["tiny"], "data_dir": str(data_dir), "out": str(out), "threads": 1, "max_minutes": 0.0, **kw}
    return PretrainConfig(**values)


@pytest.fixture(scope="module")
def tiny_base(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    train(_cfg(tiny_data_dir, out, max_steps=120, eval_every=40, ckpt_every=40))
    return out


def test_pretraining_lowers_validation_loss(tiny_base):
    vals = [json.loads(l) for l in open(tiny_base / "metrics.jsonl") if "val/nll_cond" in l]
    assert len(vals) >= 3
    assert vals[-1]["val/nll_cond"] < vals[0]["val/nll_cond"] - 0.3
    model, cfg = load_generator(tiny_base)
    assert cfg["step"] == 120 and cfg["provenance"]["git_commit"]
    assert cfg["data_manifest_hash"] and cfg["pretrain"]["cond_dropout"] == PRESETS["tiny"].get("cond_dropout", 0.2)
    assert (tiny_base / "checkpoint" / "tokenizer.json").exists()


def test_resume_continues_from_saved_step(tiny_data_dir, tmp_path):
    train(_cfg(tiny_data_dir, tmp_path, max_steps=30, ckpt_every=30, eval_every=30))
    _, first = load_generator(tmp_path)
    assert first["step"] == 30
    train(_cfg(tiny_data_dir, tmp_path, max_steps=50, ckpt_every=30, eval_every=30), resume=True)
    _, second = load_generator(tmp_path)
    assert second["step"] == 50
    steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl") if "train/nll" in l]
    assert steps == sorted(steps) and steps[-1] == 50 and steps.count(30) == 1


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "divcfg.cli", *args], capture_output=True, text=True, timeout=300)


def test_sample_cli_writes_midi(tiny_base, tmp_path):
    r = _cli("sample", "--checkpoint", str(tiny_base), "--prompt", "an Irish jig in D major, 6/8",
             "--cfg", "3", "--num-samples", "2", "--max-new-tokens", "120", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "samples.json").read_text())
    assert meta["gamma"] == 3.0 and len(meta["samples"]) == 2
    assert meta["provenance"]["git_commit"]
    # the MIDI files: one per sample that has notes, listed in samples.json, readable, with those notes
    from symusic import Score
    written = [s for s in meta["samples"] if s.get("midi")]
    assert written and sorted(tmp_path.glob("*.mid")) == sorted(tmp_path / Path(s["midi"]).name for s in written)
    for s in written:
        notes = sum(len(t.notes) for t in Score(s["midi"]).tracks)
        assert notes == s["n_notes"] > 0


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/ckpt", "--prompt", "a reel"], "not found"),
    (["--prompt", "  "], "empty prompt"),
    (["--prompt", "a reel", "--num-samples", "0"], "--num-samples"),
])
def test_sample_cli_user_errors_are_one_line(tiny_base, args, message):
    if "--checkpoint" not in args:
        args = ["--checkpoint", str(tiny_base), *args]
    r = _cli("sample", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr


def test_unknown_data_dir_is_one_line_error(tmp_path):
    r = _cli("pretrain", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "divcfg data" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_time_cap_cuts_a_run_short_and_records_it(tiny_data_dir, tmp_path, capfd):
    """Presets are bounded by steps; max_minutes is a safety cap. A run the cap stops before
    max_steps is finished (DONE.json) but recorded as cut short, with one warning line."""
    from divcfg.stages import is_finished, read_marker
    train(_cfg(tiny_data_dir, tmp_path, max_steps=100_000, max_minutes=0.001, eval_every=1000, ckpt_every=1000))
    marker = read_marker(tmp_path)
    assert is_finished(tmp_path)
    cut = marker["cut_short"]
    assert 1 <= cut["steps_done"] < cut["steps_planned"] == 100_000 and cut["cap_minutes"] == 0.001
    assert marker["steps_done"] == cut["steps_done"] and marker["steps_planned"] == 100_000
    _, config = load_generator(tmp_path)
    assert config["cut_short"] == cut and config["step"] == cut["steps_done"]
    warnings = [line for line in capfd.readouterr().err.splitlines() if "CUT SHORT" in line]
    assert len(warnings) == 1 and "pretrain" in warnings[0]


def test_step_bounded_run_is_not_cut_short(tiny_data_dir, tmp_path):
    from divcfg.stages import read_marker
    train(_cfg(tiny_data_dir, tmp_path, max_steps=5, max_minutes=60.0, eval_every=5, ckpt_every=5))
    marker = read_marker(tmp_path)
    assert marker["finished"] and marker["cut_short"] is None and marker["steps_done"] == 5



def test_init_starts_from_a_checkpoints_weights(tiny_base, tiny_data_dir, tmp_path):
    """--init loads a base's weights into a fresh run: with no steps the run saves exactly those
    weights (a random init would differ: they were trained 120 steps), records the init's sha256, and a few steps then move them."""
    import torch

    from divcfg.provenance import file_hash

    init = str(tiny_base / "checkpoint")
    train(_cfg(tiny_data_dir, tmp_path / "zero", max_steps=0, init=init))
    a, _ = load_generator(tiny_base)
    b, cfg = load_generator(tmp_path / "zero")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert cfg["init_weights_sha256"] == file_hash(Path(init) / "model.safetensors")
    moved, _ = load_generator(train(_cfg(tiny_data_dir, tmp_path / "moved", max_steps=3, init=init, lr=1e-3)))
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), moved.state_dict().values()))


def test_init_with_another_architecture_is_one_line_error(tiny_base, tiny_data_dir, tmp_path):
    r = _cli("pretrain", "--preset", "tiny", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o"),
             "--init", str(tiny_base), "--d-model", "32", "--max-steps", "1", "--threads", "1")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--init with a different --d-model" in lines[0], r.stderr
