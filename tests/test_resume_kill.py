"""Kill -9 anywhere: every training stage (pretrain, embedder, scorer, finetune), started through the
real CLI in a subprocess and killed with SIGKILL at a random moment after its first checkpoint,
resumes with ``--resume`` to the same model as an uninterrupted run (up to float noise), without a
duplicated metric row and without losing more than one checkpoint interval. The stage's completion
marker (``DONE.json``) exists only after the resumed run finished.

Sizes are tiny and every run uses 1 thread; the kill delay is drawn at random (its seed is printed
on failure)."""

from __future__ import annotations

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
from safetensors.torch import load_file

from divcfg.stages import is_finished

KILL_SEED = int(os.environ.get("DIVCFG_KILL_SEED", random.randrange(1 << 30)))


def _cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "divcfg.cli", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _run_killed(args: list[str], ckpt_config: Path, step_of, every: int, steps: int, rng: random.Random) -> None:
    """Start the CLI and SIGKILL it at a random moment: after its k-th checkpoint (k drawn from
    2 … steps/every - 2), plus a random fraction of the mean time a checkpoint interval took so far,
    so the kill lands anywhere in an interval (a step, a metrics write, a checkpoint write) but
    before the last one."""
    k = rng.randint(2, steps // every - 2)
    p = subprocess.Popen([sys.executable, "-m", "divcfg.cli", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)

    def wait_for(step: int) -> float:
        t0 = time.time()
        while True:
            try:
                if step_of(json.loads(ckpt_config.read_text())) >= step:
                    return time.time()
            except (OSError, ValueError):   # not written yet, or being replaced
                pass
            if p.poll() is not None:
                pytest.fail(f"the run ended before its checkpoint at step {step}: {p.stderr.read()[-2000:]}")
            if time.time() - t0 > 300:
                p.kill()
                pytest.fail(f"no checkpoint at step {step} within 300 s")
            time.sleep(0.01)

    t_first = wait_for(every)
    t_k = wait_for(k * every)
    time.sleep(rng.uniform(0, (t_k - t_first) / (k - 1)))
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stderr.close()
    assert p.returncode == -signal.SIGKILL, f"the run finished before the kill (kill seed {KILL_SEED})"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5), (k, KILL_SEED)


def _same_rows(straight: list[dict], resumed: list[dict], keys: tuple[str, ...]) -> None:
    """Same rows in the same order (so none duplicated or lost), equal values for ``keys``."""
    assert [r["step"] for r in resumed] == [r["step"] for r in straight], KILL_SEED
    assert [sorted(r) for r in resumed] == [sorted(r) for r in straight]
    for a, b in zip(straight, resumed):
        for k in keys:
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (a["step"], k, KILL_SEED)


def _ckpt_step(config: Path) -> int:
    return json.loads(config.read_text())["step"]


@pytest.fixture(scope="module")
def rng():
    return random.Random(KILL_SEED)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("kill")


# --------------------------------------------------------------------------- pretrain

def _pretrain_args(data: Path, out: Path) -> list[str]:
    return ["pretrain", "--preset", "tiny", "--data-dir", str(data), "--out", str(out), "--max-steps", "50",
            "--ckpt-every", "10", "--eval-every", "20", "--eval-pieces", "16", "--threads", "1",
            "--max-minutes", "0"]


@pytest.fixture(scope="module")
def straight_base(tiny_data_dir, runs):
    out = runs / "base_straight"
    _cli(_pretrain_args(tiny_data_dir, out))
    return out


def test_pretrain_resumes_after_kill(tiny_data_dir, runs, straight_base, rng):
    out = runs / "base_killed"
    args = _pretrain_args(tiny_data_dir, out)
    _run_killed(args, out / "checkpoint" / "config.json", lambda c: c["step"], 10, 50, rng)
    assert not is_finished(out)
    logged = max([r["step"] for r in _rows(out / "metrics.jsonl")] + [0])
    kept = _ckpt_step(out / "checkpoint" / "config.json") if (out / "checkpoint").exists() else \
        _ckpt_step(out / "checkpoint.old" / "config.json")
    assert kept >= logged - 10 and kept >= 20      # at most one checkpoint interval lost
    assert f"resuming from step {kept} " in _cli(args + ["--resume"]).stdout
    assert is_finished(out)
    _same_weights(straight_base / "checkpoint" / "model.safetensors", out / "checkpoint" / "model.safetensors")
    _same_rows(_rows(straight_base / "metrics.jsonl"), _rows(out / "metrics.jsonl"),
               ("train/nll", "lr", "val/nll_cond", "val/nll_uncond"))


def test_pretrain_resume_refuses_changed_architecture(tiny_data_dir, runs, straight_base):
    out = runs / "base_arch"
    _cli(_pretrain_args(tiny_data_dir, out)[:-2] + ["--max-minutes", "0", "--max-steps", "10"])
    r = subprocess.run([sys.executable, "-m", "divcfg.cli", *_pretrain_args(tiny_data_dir, out), "--resume",
                        "--d-model", "32"], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--d-model" in lines[0] and "--resume" in lines[0], r.stderr
    assert json.loads((out / "checkpoint" / "config.json").read_text())["pretrain"]["d_model"] == 64


# --------------------------------------------------------------------------- judges

def _judge_args(kind: str, data: Path, out: Path) -> list[str]:
    return [kind, "train", "--preset", "tiny", "--data-dir", str(data), "--out", str(out), "--steps", "50",
            "--ckpt-every", "10", "--eval-pieces", "6", "--threads", "1", "--minutes", "0"]


@pytest.fixture(scope="module")
def straight_embedder(tiny_data_dir, runs):
    out = runs / "emb_straight"
    _cli(_judge_args("embedder", tiny_data_dir, out))
    return out


@pytest.mark.parametrize("kind", ["embedder", "scorer"])
def test_judge_resumes_after_kill(kind, tiny_data_dir, runs, straight_embedder, rng):
    straight = straight_embedder
    if kind == "scorer":
        straight = runs / "scorer_straight"
        _cli(_judge_args(kind, tiny_data_dir, straight))
    out = runs / f"{kind}_killed"
    args = _judge_args(kind, tiny_data_dir, out)
    _run_killed(args, out / "config.json", lambda c: c["training"]["steps"], 10, 50, rng)
    assert not is_finished(out)
    kept = _ckpt_step_judge(out)
    assert kept % 10 == 0 and kept >= 20
    r = _cli(args + ["--resume"])
    assert f"resuming from step {kept} " in r.stdout
    assert is_finished(out) and json.loads((out / "DONE.json").read_text())["steps_done"] == 50
    _same_weights(straight / "model.safetensors", out / "model.safetensors")
    rows = _rows(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 51)), r.stdout[-500:]
    _same_rows(_rows(straight / "metrics.jsonl"), rows, ("train/loss", "train/pair_acc"))


def _ckpt_step_judge(out: Path) -> int:
    from divcfg.checkpoint import load_training_state
    return int(load_training_state(out)["step"])


# --------------------------------------------------------------------------- finetune

def _finetune_args(data: Path, base: Path, embedder: Path, out: Path) -> list[str]:
    return ["finetune", "--preset", "tiny", "--data-dir", str(data), "--base", str(base), "--embedder", str(embedder),
            "--out", str(out), "--beta", "5", "--max-steps", "10", "--ckpt-every", "2", "--eval-every", "0",
            "--eval-prompts", "2", "--eval-teacher", "false", "--prompts-per-step", "2", "--max-new-tokens", "32",
            "--threads", "1", "--max-minutes", "0", "--no-progress"]


def test_finetune_resumes_after_kill(tiny_data_dir, runs, straight_base, straight_embedder, rng):
    straight, out = runs / "ft_straight", runs / "ft_killed"
    _cli(_finetune_args(tiny_data_dir, straight_base, straight_embedder, straight))
    args = _finetune_args(tiny_data_dir, straight_base, straight_embedder, out)
    _run_killed(args, out / "checkpoint" / "config.json", lambda c: c["step"], 2, 10, rng)
    assert not is_finished(out)
    logged = max(r["step"] for r in _rows(out / "metrics.jsonl"))
    ckpt = out / "checkpoint" if (out / "checkpoint").exists() else out / "checkpoint.old"
    kept = _ckpt_step(ckpt / "config.json")
    assert kept >= logged - 2 and kept >= 4
    assert f"resuming from step {kept} " in _cli(args + ["--resume"]).stdout
    assert is_finished(out)
    _same_weights(straight / "checkpoint" / "model.safetensors", out / "checkpoint" / "model.safetensors")
    _same_rows(_rows(straight / "metrics.jsonl"), _rows(out / "metrics.jsonl"),
               ("loss", "kl/teacher", "reward/diversity/mean", "eval/diversity", "completions/mean_length"))


# --------------------------------------------------------------------------- NaN guard

def test_judge_trainers_stop_on_non_finite_loss(tiny_data_dir):
    from divcfg.music.judges.alignment_cli import make_config, train_scorer
    from divcfg.music.judges.diversity import EmbedderConfig
    from divcfg.music.judges.diversity_cli import load_piece_notes, train_embedder
    from divcfg.errors import UserError
    from divcfg.music.dataset import load_split
    from divcfg.music.tokenizer import load_tokenizer
    torch.set_num_threads(1)
    notes, _ = load_piece_notes(tiny_data_dir, "train", max_pieces=40, progress=False)
    cfg = EmbedderConfig(vit="tiny", chunk_steps=32, pitch_low=36, n_pitches=60, out_dim=16)
    with pytest.raises(UserError, match="non-finite loss .* no checkpoint was written yet"):
        train_embedder(notes, cfg, augment=None, steps=20, minutes=0, batch_size=8, lr=float("inf"),
                       progress=False)
    tok = load_tokenizer(tiny_data_dir)
    with pytest.raises(UserError, match="non-finite loss"):
        train_scorer(load_split(tiny_data_dir, "train")[:40], tok, make_config(tok, "tiny"), steps=20, minutes=0,
                     batch_size=8, lr=float("inf"), progress=False, data_dir=tiny_data_dir)


# --------------------------------------------------------------------------- no code execution on --resume

class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_training_state_with_code_is_refused(tmp_path):
    """Training state is read with weights_only=True: tensors and plain data load, a pickled
    callable is refused with a one-line error instead of being run."""
    from divcfg.checkpoint import load_training_state, save_checkpoint
    from divcfg.errors import UserError
    rng = random.Random(3)
    plain = {"step": 7, "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "queue": [[1, 2]]}
    save_checkpoint(tmp_path / "ok", {"w": torch.zeros(2)}, {"kind": "x"}, plain)
    state = load_training_state(tmp_path / "ok")
    assert state["step"] == 7 and tuple(state["python_rng"][1]) == rng.getstate()[1]
    save_checkpoint(tmp_path / "bad", {"w": torch.zeros(2)}, {"kind": "x"}, {"step": 1, "x": _RunsCode()})
    with pytest.raises(UserError, match="refused"):
        load_training_state(tmp_path / "bad")
