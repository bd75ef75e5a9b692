"""`divcfg finetune` end to end on the tiny real data set: distillation, the diversity term,
kill-and-resume, and one-line errors. A tiny generator (random weights with a strong condition,
so CFG changes its distribution) plays the base; a tiny diversity embedder is trained briefly."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from divcfg.errors import UserError
from divcfg.finetune import PRESETS, FinetuneConfig, check_finite, finetune
from divcfg.models.generator import load_generator, save_generator
from divcfg.models.transformer import ModelConfig, MusicTransformer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_dir(request, tmp_path_factory):
    """The shared tiny data set (conftest's ``tiny_data_dir``), built here if that fixture is absent."""
    try:
        return Path(request.getfixturevalue("tiny_data_dir"))
    except pytest.FixtureLookupError:
        from divcfg.music.corpus import build
        return build("tiny", data_dir=tmp_path_factory.mktemp("data"), workers=2, quiet=True)


@pytest.fixture(scope="module")
def base_ckpt(data_dir, tmp_path_factory):
    from divcfg.music.tokenizer import load_tokenizer, special_ids
    tok = load_tokenizer(data_dir)
    ids = special_ids(tok)
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(vocab_size=len(tok), n_layer=2, n_head=2, d_model=48, n_prefix=2,
                                         max_len=96, dropout=0.0, pad_id=ids["pad"], bos_id=ids["bos"],
                                         eos_id=ids["eos"]))
    with torch.no_grad():
        for p in model.cond_proj.parameters():
            p.mul_(20)           # the condition matters, so the γ=3 teacher differs from the student
        model.ln_f.weight.mul_(15)  # a peaked output distribution, as after training
    path = tmp_path_factory.mktemp("base") / "checkpoint"
    save_generator(path, model, {"provenance": {"note": "tiny random test base"}}, data_dir / "tokenizer.json")
    return path


@pytest.fixture(scope="module")
def embedder_ckpt(data_dir, tmp_path_factory):
    from divcfg.music.judges.diversity import EmbedderConfig, save_diversity_embedder
    from divcfg.music.judges.diversity_cli import load_piece_notes, train_embedder
    notes, _ = load_piece_notes(data_dir, "train", progress=False)
    E, _ = train_embedder(notes, EmbedderConfig(vit="tiny", chunk_steps=32, out_dim=64), augment=None, steps=40,
                          minutes=1.0, batch_size=32, lr=2e-3, progress=False)
    path = tmp_path_factory.mktemp("embedder") / "embedder"
    save_diversity_embedder(path, E, tokenizer_path=data_dir / "tokenizer.json")
    return path


def tiny_cfg(data_dir, base, out, **kw) -> FinetuneConfig:
    values = {**PRESETS["tiny"], "data_dir": str(data_dir), "base": str(base), "out": str(out), "embedder": "",
              "threads": 1, **kw}
    return FinetuneConfig(**values)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_distillation_reduces_kl_to_gamma3_teacher(data_dir, base_ckpt, tmp_path):
    cfg = tiny_cfg(data_dir, base_ckpt, tmp_path / "ft", gamma=3.0, beta=0.0, max_steps=40, lr=1e-4,
                   eval_samples=4, eval_every=0, eval_teacher=False)
    ckpt = finetune(cfg, progress=False)
    s = summary(tmp_path / "ft")
    start, end = s["start"]["eval/kl_teacher"], s["end"]["eval/kl_teacher"]
    assert start > 0.01, f"the tiny teacher should differ from the student (KL {start:.4f})"
    assert end < 0.5 * start, f"KL to the γ=3 teacher {start:.4f} -> {end:.4f}"
    rows = [json.loads(line) for line in open(tmp_path / "ft" / "metrics.jsonl")]
    train = [r for r in rows if "kl/teacher" in r]
    assert len(train) == 40 and train[-1]["step"] == 40
    for key in ("entropy", "completions/mean_length", "completions/eos_rate", "tokens_per_s", "time/sampling",
                "time/teacher", "time/update", "time/reward"):
        assert key in train[0]
    config = json.loads((ckpt / "config.json").read_text())
    assert config["kind"] == "generator" and config["gamma"] == 3.0 and config["beta"] == 0.0
    assert config["provenance"]["seed"] == cfg.seed and "git_commit" in config["provenance"]
    assert Path(config["base_checkpoint"]) == Path(base_ckpt)
    model, _ = load_generator(ckpt)          # the result is an ordinary generator checkpoint
    assert model.cfg.vocab_size > 0


def test_diversity_term_increases_diversity(data_dir, base_ckpt, embedder_ckpt, tmp_path):
    """β>0 against β=0 from the same start and seed: G=4 samples per prompt with the leave-one-out
    baseline; diversity measured on the val prompts × 16 samples (a seeded evaluation sample) and on
    the last training steps' rewards. β is large because the tiny embedder's distances are small."""
    common = dict(gamma=3.0, embedder=str(embedder_ckpt), max_steps=40, lr=2e-4, prompts_per_step=8, group_size=4,
                  baseline="loo", eval_samples=16, eval_every=0, eval_teacher=False, max_new_tokens=64)
    div, train_reward = {}, {}
    for beta in (0.0, 100.0):
        run = tmp_path / f"beta{beta:g}"
        finetune(tiny_cfg(data_dir, base_ckpt, run, beta=beta, **common), progress=False)
        div[beta] = summary(run)["end"]["eval/diversity"]
        rows = [json.loads(line) for line in open(run / "metrics.jsonl") if '"reward/diversity/mean"' in line]
        train_reward[beta] = sum(r["reward/diversity/mean"] for r in rows[-10:]) / 10
        assert summary(run)["start"]["eval/diversity"] == pytest.approx(
            summary(tmp_path / "beta0")["start"]["eval/diversity"])  # same start
    assert div[100.0] > 1.4 * div[0.0], div
    assert train_reward[100.0] > 1.4 * train_reward[0.0], train_reward


def test_kill_and_resume_continues_the_same_run(data_dir, base_ckpt, tmp_path):
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "divcfg.cli", "finetune", "--preset", "tiny", "--data-dir", str(data_dir),
            "--base", str(base_ckpt), "--embedder", "", "--out", str(run), "--gamma", "3", "--max-steps", "400",
            "--ckpt-every", "3", "--eval-every", "0", "--eval-teacher", "false", "--threads", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cfg_file = run / "checkpoint" / "config.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cfg_file.exists() and json.loads(cfg_file.read_text()).get("step", 0) >= 6:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((run / "checkpoint" / "config.json").read_text())["step"]
    assert 6 <= killed_at < 400

    # resume in the same folder with a smaller total: it continues from the checkpoint and finishes
    total = killed_at + 4
    res = subprocess.run(args[:-1] + ["--resume", "--max-steps", str(total)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from step {killed_at}" in res.stdout
    assert json.loads((run / "checkpoint" / "config.json").read_text())["step"] == total
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl") if '"kl/teacher"' in line]
    assert steps == list(range(1, total + 1))   # no gap, no duplicate rows from the killed process

    # the same run without interruption reaches the same weights (optimizer, RNG and step restored)
    straight = finetune(tiny_cfg(data_dir, base_ckpt, tmp_path / "straight", gamma=3.0, max_steps=total,
                                 ckpt_every=3, eval_every=0, eval_teacher=False), progress=False)
    a, _ = load_generator(run / "checkpoint")
    b, _ = load_generator(straight)
    base, _ = load_generator(base_ckpt)
    # Bit-equality is out of reach across processes (bf16 autocast and thread counts change the
    # last float bits, which flips an occasional sampled token, and on-policy runs then drift).
    # A resume that lost its optimizer/step state would redo >= 60% of the movement from the base
    # (killed_at >= 6 of total = killed_at + 4 steps); an honest resume stays far closer.
    gap = sum(float((pa - pb).pow(2).sum()) for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))
    moved = sum(float((pb - p0).pow(2).sum()) for pb, p0 in zip(b.state_dict().values(), base.state_dict().values()))
    assert moved > 0 and gap ** 0.5 < 0.3 * moved ** 0.5, (gap ** 0.5, moved ** 0.5)


def test_corrupt_checkpoint_gives_one_line_error(data_dir, base_ckpt, tmp_path):
    from divcfg.cli import main
    run = tmp_path / "ft"
    finetune(tiny_cfg(data_dir, base_ckpt, run, max_steps=2, eval_every=0, eval_teacher=False), progress=False)
    (run / "checkpoint" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    res = subprocess.run([sys.executable, "-m", "divcfg.cli", "finetune", "--preset", "tiny", "--data-dir",
                          str(data_dir), "--base", str(base_ckpt), "--embedder", "", "--out", str(run),
                          "--max-steps", "4", "--resume", "--no-progress"],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "corrupt" in lines[0] and "Traceback" not in res.stderr
    # a fresh run into a folder that already holds a checkpoint is refused (no silent overwrite)
    assert main(["finetune", "--preset", "tiny", "--data-dir", str(data_dir), "--base", str(base_ckpt),
                 "--embedder", "", "--out", str(run)]) == 2


def test_user_errors_and_nan_guard(data_dir, base_ckpt, tmp_path):
    with pytest.raises(UserError, match="--embedder"):
        finetune(tiny_cfg(data_dir, base_ckpt, tmp_path / "a", beta=1.0), progress=False)
    with pytest.raises(UserError, match="group-size >= 3"):
        tiny_cfg(data_dir, base_ckpt, tmp_path / "b", baseline="loo").validate()
    with pytest.raises(UserError, match="not found"):
        finetune(tiny_cfg(data_dir, tmp_path / "missing", tmp_path / "c"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            finetune(tiny_cfg(data_dir, base_ckpt, tmp_path / "d", device="cuda"), progress=False)
    check_finite(torch.tensor(1.0), torch.tensor(2.0), 5, tmp_path, 4)
    with pytest.raises(UserError, match="step 4"):
        check_finite(torch.tensor(float("nan")), torch.tensor(1.0), 5, tmp_path, 4)
    assert all(f.metadata.get("help") for f in dataclasses.fields(FinetuneConfig))


def test_in_key_rate_on_real_tunes(data_dir):
    """The quick evaluation's key check: real tunes are mostly in the key their metadata names."""
    from divcfg.domains.music import in_key_rate, key_pitch_class
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer
    assert key_pitch_class("F# minor") == (6, "minor") and key_pitch_class("Gb minor") == (6, "minor")
    assert key_pitch_class("B- major") == (10, "major") and key_pitch_class("modal") is None
    pieces = [p for p in load_split(data_dir, "train") if key_pitch_class(p["meta"].get("key"))][:30]
    tok = load_tokenizer(data_dir)
    right = in_key_rate(tok, [p["tokens"] for p in pieces], [p["meta"]["key"] for p in pieces])
    shifted = in_key_rate(tok, [p["tokens"] for p in pieces], ["C# major" if p["meta"]["key"] != "C# major" else "G major"
                                                              for p in pieces])
    assert right > 0.6 and shifted < 0.2 and right > shifted, (right, shifted)
    assert in_key_rate(tok, [[]], ["D major"]) == 0.0


def test_meter_gate_pays_only_generations_in_the_requested_meter(data_dir):
    """``reward_valid``: real tunes in their own meter are paid; the same tunes asked for another
    meter are not (under 'meter'), while 'empty' pays every decodable tune either way."""
    from divcfg.domains.music import TrainPrompts, reward_valid
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer
    tok = load_tokenizer(data_dir)
    pieces = [p for p in load_split(data_dir, "train") if p["meta"].get("meter") in ("2/4", "6/8", "3/4")][:24]
    seqs = [p["tokens"] for p in pieces]
    own = [p["meta"]["meter"] for p in pieces]
    other = ["3/4" if m != "3/4" else "6/8" for m in own]
    embedded = torch.ones(len(seqs), dtype=torch.bool)
    assert reward_valid(embedded, seqs, own, "empty", tok).all()
    assert reward_valid(embedded, seqs, other, "empty", tok).all()
    paid_own = reward_valid(embedded, seqs, own, "meter", tok).float().mean()
    paid_other = reward_valid(embedded, seqs, other, "meter", tok).float().mean()
    assert paid_own > 0.8 and paid_other < 0.2, (paid_own, paid_other)
    # an undecodable generation is never paid
    embedded[0] = False
    assert not reward_valid(embedded, seqs, own, "meter", tok)[0]
    # training prompts carry the meter of the piece their caption describes
    prompts = TrainPrompts(data_dir)
    texts, asks = prompts.draw(6, random.Random(0))
    assert len(texts) == len(asks) == 6
    assert all(a.meter is None or "/" in a.meter for a in asks)


def test_key_gate_pays_only_generations_in_the_named_key_or_its_relative(data_dir):
    """``reward_valid(..., "key")``: real tunes asked for their own key are mostly paid, the same tunes
    asked for the key a tritone away (neither it nor its relative) mostly not; a caption that names no
    key (None) gates on the meter alone; training draws carry the key only when the caption names it."""
    from divcfg.domains.music import TrainPrompts, reward_valid
    from divcfg.music.attributes import parse_key
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer
    tok = load_tokenizer(data_dir)
    pieces = [p for p in load_split(data_dir, "train") if parse_key(p["meta"].get("key"))][:24]
    seqs, meters = [p["tokens"] for p in pieces], [p["meta"].get("meter") for p in pieces]
    own = [parse_key(p["meta"]["key"]) for p in pieces]
    tritone = [((pc + 6) % 12, mode) for pc, mode in own]
    embedded = torch.ones(len(seqs), dtype=torch.bool)
    meter_only = reward_valid(embedded, seqs, meters, "meter", tok)
    paid_own = reward_valid(embedded, seqs, meters, "key", tok, own)
    paid_far = reward_valid(embedded, seqs, meters, "key", tok, tritone)
    assert not (paid_own & ~meter_only).any() and not (paid_far & ~meter_only).any()   # the key gate adds to the meter's
    n = meter_only.sum().item()
    # the estimator agrees with the data's key (or its relative) on about 60-80% of real tunes; on almost
    # none a tritone away
    assert n >= 10 and paid_own.sum() >= 0.5 * n and paid_far.sum() <= 0.1 * n, (n, paid_own.sum(), paid_far.sum())
    assert torch.equal(reward_valid(embedded, seqs, meters, "key", tok, [None] * len(seqs)), meter_only)
    prompts = TrainPrompts(data_dir)
    texts, asks = prompts.draw(40, random.Random(1))
    assert any(a.key is not None for a in asks)
    assert all(a.key is None or a.key[1] in t for t, a in zip(texts, asks))   # "… in D major …" names it


def test_meter_gated_run_logs_unpaid_rate(data_dir, base_ckpt, embedder_ckpt, tmp_path):
    run = tmp_path / "gated"
    finetune(tiny_cfg(data_dir, base_ckpt, run, beta=5.0, embedder=str(embedder_ckpt), reward_gate="meter",
                      max_steps=3, eval_teacher=False), progress=False)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl") if '"reward/unpaid_rate"' in line]
    # the gate refused decodable generations in the wrong meter: more unpaid than empty in some step
    assert rows and any(r["reward/unpaid_rate"] > r["reward/empty_rate"] for r in rows), rows
    # the same run ungated pays every decodable generation: unpaid is exactly empty
    finetune(tiny_cfg(data_dir, base_ckpt, tmp_path / "ungated", beta=5.0, embedder=str(embedder_ckpt),
                      reward_gate="empty", max_steps=3, eval_teacher=False), progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "ungated" / "metrics.jsonl") if '"reward/unpaid_rate"' in line]
    assert rows and all(r["reward/unpaid_rate"] == r["reward/empty_rate"] for r in rows)
    # the key gate refuses at least what the meter gate refuses (the same seed draws the same samples)
    finetune(tiny_cfg(data_dir, base_ckpt, tmp_path / "key", beta=5.0, embedder=str(embedder_ckpt), reward_gate="key",
                      max_steps=3, eval_teacher=False), progress=False)
    keyed = [json.loads(line) for line in open(tmp_path / "key" / "metrics.jsonl") if '"reward/unpaid_rate"' in line]
    metered = [json.loads(line) for line in open(run / "metrics.jsonl") if '"reward/unpaid_rate"' in line]
    assert keyed[0]["reward/unpaid_rate"] >= metered[0]["reward/unpaid_rate"] > 0
    with pytest.raises(UserError, match="--reward-gate"):
        finetune(tiny_cfg(data_dir, base_ckpt, tmp_path / "bad", reward_gate="tempo"), progress=False)


def test_init_starts_the_student_from_another_run_of_the_same_base(data_dir, base_ckpt, embedder_ckpt, tmp_path):
    """``--init``: the student starts from the given run's weights (here a 3-step β=0 run), the teacher
    stays the base; a run with 0 steps saves exactly its starting weights. LoRA cannot take it."""
    from safetensors.torch import load_file
    first = tmp_path / "beta0"
    finetune(tiny_cfg(data_dir, base_ckpt, first, max_steps=3, eval_teacher=False), progress=False)
    start = tmp_path / "from_beta0"
    finetune(tiny_cfg(data_dir, base_ckpt, start, beta=5.0, embedder=str(embedder_ckpt), init=str(first),
                      max_steps=0, eval_teacher=False), progress=False)
    a = load_file(str(first / "checkpoint" / "model.safetensors"))
    b = load_file(str(start / "checkpoint" / "model.safetensors"))
    base = load_file(str(Path(base_ckpt) / "checkpoint" / "model.safetensors")) \
        if (Path(base_ckpt) / "checkpoint").exists() else load_file(str(Path(base_ckpt) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(base[k].float(), b[k].float()) for k in b)     # not the base's weights
    with pytest.raises(UserError, match="--init"):
        finetune(tiny_cfg(data_dir, base_ckpt, tmp_path / "lora", init=str(first), lora_r=4), progress=False)
